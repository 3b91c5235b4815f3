"""Cluster entry points: E-step shards as separate jobs + merge, the training-job launcher, accelerate and Slurm files."""

import json
import os
import subprocess
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch

from lt_utils.data import chunk_document
from lt_utils.estep import EStepConfig, model_fingerprint, run_estep
from lt_utils.model import ModelSpec
from lt_utils.paper import estep_jobs
from lt_utils.paper.train_launch import job_from_dict, main as launch_main, write_job
from lt_utils.runtime.paths import PARAMS_DIR
from lt_utils.train import TrainJob, TrainSpec

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def chunks_of(docs, n):
    out = []
    for d in docs:
        out.extend(chunk_document(d.doc_id, [d.head, *d.suffixes], mean_units=1.0, prefix_chunks=1)[1])
    return out[:n]


def test_shards_as_separate_jobs_merge_to_the_unsharded_estep(tiny_model, tokenizer, docs, tmp_path):
    ckpt = tmp_path / "gen"
    tiny_model.save_pretrained(str(ckpt))
    tokenizer.save_pretrained(str(ckpt))
    chunks = chunks_of(docs, 10)
    cfg = EStepConfig(k=2, max_thought_tokens=5, batch_chunks=2, seed=3)
    out = tmp_path / "estep"
    estep_jobs.prepare(out, chunks, model=str(ckpt), cfg=cfg, num_shards=3)
    assert json.loads((out / "estep.json").read_text())["config"] == asdict(cfg)
    estep_jobs.run_shard(out, 2)
    with pytest.raises(FileNotFoundError, match="2 of 3 shards"):
        estep_jobs.merge(out)
    assert estep_jobs.missing_shards(out) == [0, 1]
    for i in (1, 0):  # any order
        estep_jobs.run_shard(out, i)
    first = estep_jobs.shard_path(out, 0, 3).stat().st_mtime_ns
    estep_jobs.run_shard(out, 0)  # a finished shard is skipped
    assert estep_jobs.shard_path(out, 0, 3).stat().st_mtime_ns == first
    merged = [json.loads(line) for line in estep_jobs.merge(out).read_text().splitlines()]
    whole = run_estep(tiny_model, tokenizer, chunks, cfg, model_key=model_fingerprint(ckpt), progress=False)
    assert merged == json.loads(json.dumps(whole))
    assert json.loads((out / "summary.json").read_text())["n_chunks"] == 10


def test_training_job_round_trips_through_json(tmp_path, capsys):
    job = TrainJob(out_dir="runs/x", tokenizer_dir="tok", corpus_path="c.jsonl", layout="random",
                   model=ModelSpec(init_from="TinyLlama/TinyLlama_v1.1"),
                   train=TrainSpec(steps=10, batch_size=24, seq_len=2048, lr=1e-4), seed=42, info={"arm": "a"})
    if "eval_shots" in {f.name for f in fields(TrainJob)}:  # a tuple field, which JSON stores as a list
        job = replace(job, eval_shots=({"question": "1+1", "answer": "2"},))
    path = write_job(tmp_path / "job.json", job)
    assert job_from_dict(json.loads(path.read_text())) == job
    assert launch_main([str(path), "--print"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["seq_len"] == 2048
    bad = json.loads(path.read_text())
    bad["train"]["lr_typo"] = 1.0
    with pytest.raises(ValueError, match="job.train: unknown key 'lr_typo'"):
        job_from_dict(bad)


def test_accelerate_configs_load_as_accelerate_reads_them():
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    def value(x):
        return getattr(x, "value", x)

    # from_yaml_file refuses unknown top-level keys, so a misspelt option fails here, not on the cluster
    ddp = load_config_from_file(str(PARAMS_DIR / "paper" / "accelerate" / "ddp.yaml"))
    assert isinstance(ddp, ClusterConfig)
    assert (value(ddp.distributed_type), value(ddp.mixed_precision)) == ("MULTI_GPU", "bf16")
    assert ddp.num_processes >= 2 and not ddp.use_cpu
    assert getattr(ddp, "gradient_accumulation_steps", None) in (None, 1)  # the loop does not accumulate
    fsdp = load_config_from_file(str(PARAMS_DIR / "paper" / "accelerate" / "fsdp.yaml"))
    assert (value(fsdp.distributed_type), value(fsdp.mixed_precision)) == ("FSDP", "bf16")
    fc = fsdp.fsdp_config
    assert fc["fsdp_version"] == 2 and fc["fsdp_reshard_after_forward"] is True
    assert fc["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fc["fsdp_transformer_layer_cls_to_wrap"] == LlamaDecoderLayer.__name__


def test_slurm_array_script_submits_shards_then_a_dependent_merge(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PY": "python"}
    out = subprocess.run(["bash", str(PARAMS_DIR / "paper" / "slurm" / "estep_array.sh"), str(tmp_path / "o"),
                          "chunks.jsonl", "ckpt", "8"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "-m lt_utils.paper.estep_jobs prepare" in lines[0] and "--num-shards 8" in lines[0]
    assert "--array=0-7%50" in lines[1] and "--gres=gpu:1" in lines[1]
    assert "estep_jobs shard" in lines[1] and "$SLURM_ARRAY_TASK_ID" in lines[1]
    assert "--dependency=afterok:DRYRUN" in lines[2] and "estep_jobs merge" in lines[2]
    bad = subprocess.run(["bash", str(PARAMS_DIR / "paper" / "slurm" / "estep_array.sh")], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert bad.returncode != 0 and "usage" in bad.stderr
