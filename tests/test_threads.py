"""`workers: 0` means every core: the E-step, the ELBO's E-step and evaluation along training get all of them."""

from pathlib import Path
from types import SimpleNamespace

import torch

from lt_utils import parallel, train
from lt_utils.stages import bootstrap_em
from lt_utils.stages.bootstrap_em import BootstrapConfig, Study


def fake_cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(parallel, "available_cores", lambda: n)


def captured_threads(monkeypatch) -> dict:
    got = {}

    def fake(*args, threads=None, **kw):
        got["threads"] = threads
        return "ran"

    monkeypatch.setattr(bootstrap_em, "with_generator", fake)
    monkeypatch.setattr(bootstrap_em, "sample_and_score", fake)
    return got


def test_workers_zero_gives_the_e_step_every_core(monkeypatch):
    fake_cores(monkeypatch, 3)
    got = captured_threads(monkeypatch)
    study = SimpleNamespace(cfg=BootstrapConfig(workers=0, threads_per_worker=1), tok_dir=Path("tok"))
    assert Study.with_generator(study, Path("gen"), lambda *a: None) == "ran"   # E-step, prior samples, ELBO
    assert got["threads"] == 3
    got.clear()
    Study.sample_and_score(study, Path("gen"), [], None, Path("cache"))          # the sharded E-step's workers
    assert got["threads"] == 3
    study.cfg = BootstrapConfig(workers=2, threads_per_worker=2)
    Study.with_generator(study, Path("gen"), lambda *a: None)
    assert got["threads"] == 4


def test_the_generator_runs_on_the_threads_it_is_given(monkeypatch):
    monkeypatch.setattr(bootstrap_em, "load_tokenizer", lambda path: "tok")
    monkeypatch.setattr(bootstrap_em, "load_model", lambda path, device="cpu": "model")
    before = torch.get_num_threads()
    try:
        seen = bootstrap_em.with_generator(Path("gen"), Path("tok"), lambda m, tok, be: torch.get_num_threads(),
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
