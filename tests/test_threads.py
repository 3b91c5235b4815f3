"""`workers: 0` means every core: the E-step, the ELBO's E-step and evaluation along training get all of them."""

import dataclasses
from pathlib import Path

import pytest
import torch

from lt_utils import train

from lt_utils.runtime import parallel
from lt_utils.stages import em_estep
from lt_utils.stages.bootstrap_em import BootstrapConfig


def fake_cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(parallel, "available_cores", lambda: n)


def captured_threads(monkeypatch) -> dict:
    got = {}

    def fake(*args, threads=None, **kw):
        got["threads"] = threads
        return "ran"

    monkeypatch.setattr(em_estep, "with_generator", fake)
    monkeypatch.setattr(em_estep, "sample_and_score", fake)
    return got


def test_workers_zero_gives_the_e_step_every_core(monkeypatch):
    fake_cores(monkeypatch, 3)
    got = captured_threads(monkeypatch)
    cfg = BootstrapConfig(workers=0, threads_per_worker=1)
    assert em_estep.with_stage_generator(cfg, Path("tok"), Path("gen"), lambda *a: None) == "ran"   # E-step, ELBO
    assert got["threads"] == 3
    got.clear()
    em_estep.stage_sample_and_score(cfg, Path("tok"), Path("gen"), [], None, Path("cache"))   # shard workers
    assert got["threads"] == 3
    cfg = BootstrapConfig(workers=2, threads_per_worker=2)
    em_estep.with_stage_generator(cfg, Path("tok"), Path("gen"), lambda *a: None)
    assert got["threads"] == 4


def test_the_generator_runs_on_the_threads_it_is_given(monkeypatch):
    monkeypatch.setattr(em_estep, "load_tokenizer", lambda path: "tok")
    monkeypatch.setattr(em_estep, "load_model", lambda path, device="cpu": "model")
    before = torch.get_num_threads()
    try:
        seen = em_estep.with_generator(Path("gen"), Path("tok"), lambda m, tok, be: torch.get_num_threads(),
                                           threads=2)
        assert seen == 2
    finally:
        torch.set_num_threads(before)


def test_workers_zero_runs_one_training_process_per_core(monkeypatch):
    """Evaluation along training runs inside the training workers: one process per core, each on its threads."""
    fake_cores(monkeypatch, 5)
    got = {}

    def fake_parallel(fn, jobs, *, workers, threads_per_worker, **kw):
        got.update(workers=workers, threads=threads_per_worker)
        return []

    monkeypatch.setattr(parallel, "run_parallel", fake_parallel)
    train.run_jobs([], BootstrapConfig(workers=0, threads_per_worker=1), Path("jobs"))
    assert got == {"workers": 5, "threads": 1}


def _chunks(docs, n):
    from lt_utils.data import chunk_document

    out = []
    for d in docs:
        out.extend(chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.0, prefix_chunks=1)[1])
    return out[:n]


def test_e_step_groups_side_by_side_give_the_records_of_one_lane(tiny_model, tokenizer, docs, tmp_path, monkeypatch):
    """With n threads the E-step runs n lanes of one thread each: the same records to the bit, torch's threads
    restored; a group that fails still leaves every other group in flight saved."""
    from lt_utils import estep
    from lt_utils.estep import CandidateCache, EStepConfig, run_estep

    chunks = _chunks(docs, 10)
    # 6 rows per group in scoring batches of 4: with lanes, each group's scoring is two tasks
    cfg = EStepConfig(k=3, max_thought_tokens=6, batch_chunks=2, seed=5, score_batch_size=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_estep(tiny_model, tokenizer, chunks, cfg, model_key="m", progress=False)
        torch.set_num_threads(3)
        three = run_estep(tiny_model, tokenizer, chunks, cfg, model_key="m", progress=False)
        assert torch.get_num_threads() == 3
        assert [(r["position"], r["selected"]) for r in one] == [(r["position"], r["selected"]) for r in three]
        for a, b in zip(one, three):
            for x, y in zip(a["candidates"], b["candidates"]):
                assert (x["tokens"], x["log_q"], x["log_p"]) == (y["tokens"], y["log_q"], y["log_p"])   # to the bit

        real, second = estep.sample, [estep.posterior_prompt(tokenizer, c) for c in chunks[2:4]]

        def second_call_fails(model, prompts, **kw):   # the second group fails, whichever lane runs it first
            if list(prompts[0]) in second:
                raise RuntimeError("killed")
            return real(model, prompts, **kw)

        monkeypatch.setattr(estep, "sample", second_call_fails)
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="killed"):
            run_estep(tiny_model, tokenizer, chunks, cfg, model_key="m", cache_path=tmp_path / "c.db", progress=False)
        assert torch.get_num_threads() == 2
        # 2 lanes keep 4 groups in flight: groups 0, 2 and 3 were saved (2 chunks × K = 3 each), group 1 was not,
        # and group 4 was never started
        assert len(CandidateCache(tmp_path / "c.db")) == 3 * 2 * 3
        torch.set_num_threads(1)    # one lane: one group at a time, so only group 0 was sampled and saved
        with pytest.raises(RuntimeError, match="killed"):
            run_estep(tiny_model, tokenizer, chunks, cfg, model_key="m", cache_path=tmp_path / "d.db", progress=False)
        assert len(CandidateCache(tmp_path / "d.db")) == 2 * 3
    finally:
        torch.set_num_threads(before)


def _threads_once_alone(wait_s: float) -> tuple[int, int]:
    """A pool job: its spare threads beside the other job, then after that one finished (waits up to `wait_s`)."""
    import time

    beside = parallel.spare_threads(1)
    t0 = time.monotonic()
    while parallel._running.value > 1 and time.monotonic() - t0 < wait_s:
        time.sleep(0.05)
    return beside, parallel.spare_threads(1)


def _quick(_):
    return None


def test_a_pools_last_run_gets_the_threads_its_finished_neighbour_left():
    """Two workers, one thread each: the long job sees 1 thread while the short one runs, the pool's 2 (as far as
    the machine has them) once it is alone; outside a pool a job keeps its own."""
    out = parallel.run_parallel(parallel_job, [("long", 20.0), ("short", 0.0)], workers=2, threads_per_worker=1)
    beside, alone = out[0]
    assert alone == min(2, parallel.available_cores())
    assert beside in (1, alone)   # 1 unless the short job had already finished when the long one looked
    assert parallel.spare_threads(3) == 3   # the main process is in no pool


def parallel_job(arg):
    name, wait_s = arg
    return _threads_once_alone(wait_s) if name == "long" else _quick(None)


def test_the_thread_probe_leaves_no_gradient_and_no_random_state(tiny_model):
    """`threads_change_nothing` trains nothing: no gradient stays set and the global random stream is untouched;
    on the same thread count it finds, trivially, nothing changed."""
    spec = train.TrainSpec(steps=1, batch_size=2, seq_len=16)
    state = torch.get_rng_state()
    before = torch.get_num_threads()
    assert train.threads_change_nothing(tiny_model, spec, 1, 1) is True
    assert isinstance(train.threads_change_nothing(tiny_model, spec, 1, 2), bool)
    assert all(p.grad is None for p in tiny_model.parameters())
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == before


def _nested(_):
    """A pool job that runs a pool of its own in process (as a sweep's job building a base model does)."""
    return parallel.run_parallel(lambda x: parallel.spare_threads(1), [0], workers=2, threads_per_worker=1)[0]


def test_a_pool_inside_a_pools_job_keeps_the_outer_count():
    """An in-process pool nested in an in-process pool's job: the job counts once, and the outer pool's state
    is what the process has afterwards (none outside any pool)."""
    out = parallel.run_parallel(_nested, [0], workers=2, threads_per_worker=1)
    assert out == [min(2, parallel.available_cores())]
    assert parallel._running is None and parallel.spare_threads(1) == 1


def _wait_for(path: Path, wait_s: float = 60.0) -> bool:
    import time

    t0 = time.monotonic()
    while not path.exists() and time.monotonic() - t0 < wait_s:
        time.sleep(0.05)
    return path.exists()


def _then_job(arg):
    """A pool job: "quick" returns at once, "fails" raises, "slow" finishes after a marker file, "watch" waits for
    `then` to start and reports the pool's running count and its own threads as it sees them then."""
    kind, where = arg
    where = Path(where)
    if kind == "fails":
        raise ValueError("this run fails")
    if kind == "slow":
        _wait_for(where / "release", 5.0)
        (where / "slow_done").touch()
    if kind == "watch":
        started = _wait_for(where / "then_started")
        seen = (started, parallel._running.value, parallel.spare_threads(1))
        (where / "watch_saw").touch()
        return seen
    return kind


def test_then_runs_beside_a_pools_last_run_and_counts_as_running(tmp_path):
    """The next E-step starts once the job it reads has finished and a core is idle, beside the pool's last run:
    that run sees it among the running jobs (so it keeps its own thread) and it ends before the run does."""
    ran = []

    def then():
        (tmp_path / "then_started").touch()
        ran.append(_wait_for(tmp_path / "watch_saw"))

    out = parallel.run_parallel(_then_job, [("quick", str(tmp_path)), ("watch", str(tmp_path))], workers=2,
                                threads_per_worker=1, then=then, then_needs=[0])
    assert out[0] == "quick"
    assert out[1] == (True, 2, 1)   # `then` had started; the run and `then` counted; the run kept one thread
    assert ran == [True]


def test_then_waits_for_the_jobs_it_reads(tmp_path):
    """Needing the pool's slow job, `then` runs only after it, even though a worker was idle long before."""
    seen = []
    (tmp_path / "release").touch()
    out = parallel.run_parallel(_then_job, [("slow", str(tmp_path)), ("quick", str(tmp_path))], workers=2,
                                threads_per_worker=1, then=lambda: seen.append((tmp_path / "slow_done").exists()),
                                then_needs=[0])
    assert out == ["slow", "quick"] and seen == [True]
    seen.clear()   # one worker: the jobs one after another in this process, then `then`
    out = parallel.run_parallel(_then_job, [("quick", str(tmp_path))], workers=1, threads_per_worker=1,
                                then=lambda: seen.append("then"))
    assert out == ["quick"] and seen == ["then"]


def test_then_error_comes_after_every_run_and_a_failed_input_skips_it(tmp_path):
    """An error in `then` is raised only once the pool's runs have finished (none is lost to it); when a job that
    `then` reads fails, `then` never runs and the runs' failure is what is raised."""
    (tmp_path / "release").touch()

    def broken():
        raise ValueError("the E-step failed")

    with pytest.raises(ValueError, match="the E-step failed"):
        parallel.run_parallel(_then_job, [("quick", str(tmp_path)), ("slow", str(tmp_path))], workers=2,
                              threads_per_worker=1, then=broken, then_needs=[0])
    assert (tmp_path / "slow_done").exists()
    called = []
    with pytest.raises(RuntimeError, match="1 of 2 runs failed; first: 1: ValueError: this run fails"):
        parallel.run_parallel(_then_job, [("quick", str(tmp_path)), ("fails", str(tmp_path))], workers=2,
                              threads_per_worker=1, then=lambda: called.append(1), then_needs=[1])
    assert called == []


def test_the_m_step_hands_its_pool_the_next_e_step_and_after_the_last_the_elbos(monkeypatch):
    """On CPU each M-step's pool gets what reads only its seed-0 model (job 0): the next E-step, and after the last
    M-step the validation ELBOs; with shard jobs, a launcher or vLLM it gets nothing and the notebook runs them."""
    from types import SimpleNamespace

    from lt_utils.stages import bootstrap_em

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = BootstrapConfig(seeds=[0, 1], iterations=2, workers=2)
    calls, handed = [], {}
    study = SimpleNamespace(cfg=cfg, write_token_ratios=lambda: None, job_of=lambda r: r,
                            e_step=lambda it: calls.append(f"e_step {it}"),
                            validation_elbos=lambda: calls.append("elbos"))
    study.next_beside_training = lambda: bootstrap_em.Study.next_beside_training(study)
    study.train = lambda jobs, desc, then=None, then_needs=(): handed.update(first=jobs[0], then=then, needs=then_needs)
    for it in (1, 2):
        bootstrap_em.Study.m_step(study, it)
        assert handed["needs"] == [0] and (handed["first"].role, handed["first"].seed) == ("m_step", 0)
        handed["then"]()
    assert calls == ["e_step 2", "elbos"]
    for other in ({"estep_shards": 4}, {"launcher": "python"}, {"estep_backend": "vllm"}):
        study.cfg = dataclasses.replace(cfg, **other)
        bootstrap_em.Study.m_step(study, 1)
        assert handed["then"] is None
