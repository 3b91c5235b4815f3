"""Run independent jobs (arms × seeds) in parallel worker processes.

Tiny models do not scale across threads: on 2 cores, two single-threaded
processes train faster than one two-threaded process.  Workers are spawned
(not forked) so each starts with a clean torch runtime; a job that fails is
reported by name and does not take the finished ones with it (each job writes
its own results to disk as it goes).  A worker dies with the process that
spawned it (`die_with_parent`), so a killed study leaves no training behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, Callable, Sequence


# In a pool's worker: the pool's count of jobs running now (a shared int) and the threads the pool may use in all.
_running: Any = None
_pool_threads = 0


def _init_worker(threads: int, running: Any = None, pool_threads: int = 0) -> None:
    global _running, _pool_threads
    parent = mp.parent_process()
    if parent is not None:
        from lt_utils.runtime.die_with_parent import die_with_parent

        die_with_parent(parent.pid)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    _running, _pool_threads = running, pool_threads


@contextmanager
def _counted_in(running: Any):
    """Count what runs inside among a pool's running jobs (`running`: the pool's shared count)."""
    with running.get_lock():
        running.value += 1
    try:
        yield
    finally:
        with running.get_lock():
            running.value -= 1


def _counted(fn: Callable[[Any], Any], job: Any) -> Any:
    """fn(job), counted among the pool's running jobs while it runs."""
    with _counted_in(_running):
        return fn(job)


def spare_threads(own: int) -> int:
    """Threads a job of a pool may use now: its own, or its share of the pool's threads once fewer jobs run than
    the pool has workers (a pool's last run, alone on 2 cores, would otherwise leave one idle).

    Outside a pool: `own`.  `train` uses the share only where the model's training step gives bitwise the same
    gradients on either thread count (`train.threads_change_nothing`), so it buys speed, never other numbers.
    """
    if _running is None:
        return own
    return max(own, _pool_threads // max(1, _running.value))


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # macOS, Windows
        return max(1, os.cpu_count() or 1)


def torch_threads() -> int:
    """Threads torch computes with in this process (logged beside each E-step and evaluation)."""
    import torch

    return torch.get_num_threads()


def default_workers() -> int:
    return max(1, min(available_cores(), 8))


def run_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int, names: Sequence[str] | None = None,
                 threads_per_worker: int = 1, desc: str = "runs", then: Callable[[], Any] | None = None,
                 then_needs: Sequence[int] = ()) -> list[Any]:
    """fn(job) for every job, `workers` at a time; results in job order.  Raises after all jobs ran if any failed.

    `then()`, if given, runs once in this process: as soon as the jobs `then_needs` (indices) have finished and the
    pool has an idle worker with nothing left to start it (a pool's last run alone would leave a core idle), else
    after the jobs (never, if one of those jobs failed).  It counts among the pool's running jobs, so the runs still
    going keep their own threads beside it.  Its error is raised once every job has finished, so no run is lost to it.
    """
    from tqdm.auto import tqdm

    names = list(names) if names is not None else [str(i) for i in range(len(jobs))]
    results: list[Any] = [None] * len(jobs)
    errors: list[str] = []
    ctx = mp.get_context("spawn")
    pool_threads = min(max(1, workers) * threads_per_worker, available_cores())
    if workers <= 1 or len(jobs) <= 1:
        global _running, _pool_threads
        if _running is not None:   # inside a job of a pool already: that pool's count and threads stand
            _init_worker(threads_per_worker, _running, _pool_threads)
            results = [fn(job) for job in tqdm(jobs, desc=desc, unit="run")]
        else:
            _init_worker(threads_per_worker, ctx.Value("i", 0), pool_threads)
            try:
                for i, job in enumerate(tqdm(jobs, desc=desc, unit="run")):
                    results[i] = _counted(fn, job)
            finally:
                _running, _pool_threads = None, 0   # this process is in no pool any more
        if then is not None:   # one job at a time: nothing left to overlap
            then()
        return results
    running = ctx.Value("i", 0)
    then_error: BaseException | None = None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads_per_worker, running, pool_threads)) as pool:
        futures = {pool.submit(_counted, fn, job): i for i, job in enumerate(jobs)}
        finished: set[int] = set()
        with tqdm(total=len(jobs), desc=desc, unit="run") as bar:
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # keep going: other runs' results are still worth having
                    errors.append(f"{names[i]}: {type(exc).__name__}: {exc}")
                    if i in then_needs:   # what `then` reads was never written
                        then = None
                finished.add(i)
                bar.update(1)
                if then is not None and set(then_needs) <= finished and len(jobs) - len(finished) < workers:
                    task, then = then, None
                    then_error = _run_counted(task, running)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(jobs)} runs failed; first: {errors[0]}")
    if then_error is not None:
        raise then_error
    return results


def _run_counted(task: Callable[[], Any], running: Any) -> BaseException | None:
    """task() in this process, counted among a pool's running jobs; returns its error instead of raising it."""
    try:
        with _counted_in(running):
            task()
    except Exception as exc:   # raised by the caller once the pool's jobs have finished
        return exc
    return None
