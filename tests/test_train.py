"""The training loop learns, logs, checkpoints, and resumes to the same weights after a crash."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lt_utils import train as train_mod
from lt_utils.model import ModelSpec
from lt_utils.runtime.runs import read_jsonl, write_jsonl
from lt_utils.train import TrainJob, TrainSpec, run_train_job

from conftest import toy_docs


def make_job(tmp_path, tokenizer_dir, name, steps=12, layout="random", keep_checkpoints="last"):
    corpus = tmp_path / "corpus.jsonl"
    if not corpus.exists():
        write_jsonl(corpus, [d.to_dict() for d in toy_docs(30)])
        write_jsonl(tmp_path / "problems.jsonl", [{"question": "12 + 30", "answer": "42", "family": "addition"}] * 3)
    return TrainJob(out_dir=str(tmp_path / name), tokenizer_dir=str(tokenizer_dir), corpus_path=str(corpus),
                    layout=layout, model=ModelSpec(n_layer=1, n_embd=32, n_head=2, n_kv_head=2,
                                                   intermediate_size=64, max_seq_len=128),
                    train=TrainSpec(steps=steps, batch_size=4, seq_len=128, lr=3e-3, warmup_steps=2, eval_every=5,
                                    keep_checkpoints=keep_checkpoints),
                    seed=0, eval_problems_path=str(tmp_path / "problems.jsonl"), valid_path=str(corpus),
                    latent_eval=layout != "raw", info={"arm": "x"}, progress=False)


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_run_writes_metrics_final_model_and_done(tmp_path, tokenizer_dir):
    job = make_job(tmp_path, tokenizer_dir, "a")
    final = run_train_job(job)
    out = tmp_path / "a"
    assert (out / "DONE").exists() and (out / "model" / "config.json").exists() and not (out / "ckpt").exists()
    recs = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 5, 10, 12]
    assert all(0 <= r["accuracy"] <= 1 and r["val_nll"] > 0 for r in evals)
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert train_recs[-1]["tokens"] == 12 * 4 * 128 and train_recs[-1]["raw_tokens"] < train_recs[-1]["tokens"]
    assert final["step"] == 12 and json.loads((out / "run.json").read_text())["arm"] == "x"
    assert evals[-1]["val_nll"] < evals[0]["val_nll"]  # it learned something
    assert run_train_job(job) == final  # a finished run is skipped
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["model"]   # no checkpoint left behind


def test_keep_checkpoints_all_keeps_every_eval_steps_checkpoint(tmp_path, tokenizer_dir):
    run_train_job(make_job(tmp_path, tokenizer_dir, "all", keep_checkpoints="all"))
    out = tmp_path / "all"
    # evaluations at steps 5 and 10 checkpoint; step 12 is the final model
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step10", "step5"]
    assert (out / "checkpoints" / "step5" / "trainer_state.pt").exists() and (out / "model").is_dir()


def test_resume_after_crash_gives_identical_weights(tmp_path, tokenizer_dir, monkeypatch):
    ref = make_job(tmp_path, tokenizer_dir, "ref")
    run_train_job(ref)

    job = make_job(tmp_path, tokenizer_dir, "crashy")
    real_save = train_mod._save_ckpt

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after the step-5 checkpoint")

    monkeypatch.setattr(train_mod, "_save_ckpt", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_train_job(job)
    monkeypatch.setattr(train_mod, "_save_ckpt", real_save)
    out = tmp_path / "crashy"
    assert (out / "ckpt" / "trainer_state.pt").exists() and not (out / "DONE").exists()
    run_train_job(job)  # resumes from step 5
    a, b = weights(tmp_path / "ref"), weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert steps == [0, 5, 10, 12]  # no duplicated records after the resume


def test_lr_schedule_warmup_then_cosine_to_floor():
    spec = TrainSpec(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    f = train_mod.lr_lambda(spec)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 100))


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tokenizer_dir):
    """2 micro-batches of 4 rows take the same optimizer steps as batches of 8 rows.

    Paper packing, so every row carries the same number of loss tokens and the mean of the two half-batch
    means is the full-batch mean.  Adam turns float noise in near-zero gradients into updates of up to ±lr,
    so weights agree closely on average, not bitwise; one micro-batch of 4 rows is the contrast.
    """
    from dataclasses import replace

    base = make_job(tmp_path, tokenizer_dir, "full", steps=3)
    full = replace(base, train=replace(base.train, batch_size=8, attend_across_docs=True, eval_every=100))
    accum = replace(full, out_dir=str(tmp_path / "accum"), train=replace(full.train, batch_size=4, grad_accum=2))
    half = replace(full, out_dir=str(tmp_path / "half"), train=replace(full.train, batch_size=4))
    fa, fb, fc = run_train_job(full), run_train_job(accum), run_train_job(half)
    assert fa["tokens"] == fb["tokens"] == 2 * fc["tokens"] == 3 * 8 * 128
    assert fa["raw_tokens"] == fb["raw_tokens"]                      # the same rows were read
    loss = {n: [r["loss"] for r in read_jsonl(tmp_path / n / "metrics.jsonl") if r["kind"] == "train"][-1]
            for n in ("full", "accum")}
    assert loss["accum"] == pytest.approx(loss["full"], abs=1e-3)
    a, b, c = weights(tmp_path / "full"), weights(tmp_path / "accum"), weights(tmp_path / "half")
    diff_accum = torch.cat([(a[k] - b[k]).abs().flatten() for k in a]).mean()
    diff_half = torch.cat([(a[k] - c[k]).abs().flatten() for k in a]).mean()
    print(f"mean |Δw|: accumulation {float(diff_accum):.2e}, half batch {float(diff_half):.2e}")
    assert diff_accum < diff_half / 10, (float(diff_accum), float(diff_half))


@pytest.mark.slow
def test_two_process_ddp_run_through_torchrun(tmp_path, tokenizer_dir):
    """The job runner under `torchrun` with 2 CPU processes (gloo DDP): gradient accumulation without sync on
    the first micro-batch, a multi-process checkpoint, one gathered HF model at the end."""
    import shutil
    import subprocess
    import sys
    from dataclasses import replace
    from pathlib import Path

    from lt_utils.model import load_model
    from lt_utils.paper.train_launch import write_job

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists() and not shutil.which("torchrun"):
        pytest.skip("torchrun not installed")
    base = make_job(tmp_path, tokenizer_dir, "ddp", steps=6)
    job = replace(base, eval_problems_path="", train=replace(base.train, batch_size=2, grad_accum=2, eval_every=3))
    path = write_job(tmp_path / "job.json", job)
    proc = subprocess.run([str(torchrun) if torchrun.exists() else "torchrun", "--nproc_per_node", "2",
                           "-m", "lt_utils.paper.train_launch", str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert final["step"] == 6 and final["tokens"] == 6 * 2 * 2 * 2 * 128   # steps x ranks x micro x rows x T
    evals = [r["step"] for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [0, 3, 6]                     # written once, by the main process
    model = load_model(tmp_path / "ddp" / "model")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not (tmp_path / "ddp" / "ckpt").exists()


def test_dev_problems_along_training_and_test_problems_at_the_end(tmp_path, tokenizer_dir):
    from dataclasses import replace

    job = make_job(tmp_path, tokenizer_dir, "d", steps=10)
    write_jsonl(tmp_path / "dev.jsonl", [{"question": "5 + 5", "answer": "10", "family": "addition"}] * 2)
    shots = ({"question": "1 + 1", "answer": "2", "thought": "1+1=2. so 2.", "family": "addition"},) * 2
    job = replace(job, dev_problems_path=str(tmp_path / "dev.jsonl"), eval_shots=shots)
    final = run_train_job(job)
    evals = [(r["step"], r["split"]) for r in read_jsonl(tmp_path / "d" / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [(0, "dev"), (5, "dev"), (10, "dev"), (10, "test")]
    info = json.loads((tmp_path / "d" / "run.json").read_text())
    assert info["eval"]["dev_problems"] == 2 and info["eval"]["test_problems"] == 3
    from lt_utils.evaluate import common_shot_count
    from lt_utils.tokens import load_tokenizer

    fits = common_shot_count(load_tokenizer(tokenizer_dir), ["5 + 5", "12 + 30"], shots, job.model.max_seq_len)
    assert final["split"] == "test" and final["eval_shots"] == info["eval"]["shots"] == fits
    assert info["packing"]["cut_at_chunks"] and info["packing"]["thoughts"] > 0
