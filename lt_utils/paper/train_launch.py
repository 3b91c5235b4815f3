"""Run one training job described by a JSON file, so `accelerate launch` or `torchrun` can start it on many GPUs.

    python -m lt_utils.paper.train_launch JOB.json                          # one process (CPU or one GPU)
    accelerate launch --config_file params/paper/accelerate/ddp.yaml --num_processes 4 \\
        -m lt_utils.paper.train_launch JOB.json                             # every rank runs the same job
    python -m lt_utils.paper.train_launch JOB.json --print                  # show the resolved job, run nothing

JOB.json is a `train.TrainJob` as a dict (`dataclasses.asdict`), with the
nested `model` (`ModelSpec`) and `train` (`TrainSpec`); `write_job` writes one.
The notebooks run jobs in-process; this entry point is for clusters, where a
stage writes its jobs and a scheduler launches each on its own GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

from lt_utils.model import ModelSpec
from lt_utils.runtime.runs import write_json
from lt_utils.train import TrainJob, TrainSpec


def job_from_dict(d: dict) -> TrainJob:
    """A TrainJob from its dict form; unknown keys are refused (a typo must not silently use a default)."""
    def strict(cls, values: dict, where: str):
        known = {f.name for f in fields(cls)}
        extra = sorted(set(values) - known)
        if extra:
            raise ValueError(f"{where}: unknown key {extra[0]!r}")
        return values

    d = dict(strict(TrainJob, d, "job"))
    for f in fields(TrainJob):  # JSON has no tuples: give tuple-valued fields their type back
        if isinstance(f.default, tuple) and isinstance(d.get(f.name), list):
            d[f.name] = tuple(d[f.name])
    d["model"] = ModelSpec(**strict(ModelSpec, d["model"], "job.model"))
    d["train"] = TrainSpec(**strict(TrainSpec, d["train"], "job.train"))
    return TrainJob(**d)


def write_job(path: str | Path, job: TrainJob) -> Path:
    return write_json(path, asdict(job))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", help="JSON file of a TrainJob")
    ap.add_argument("--print", action="store_true", help="print the resolved job and exit")
    args = ap.parse_args(argv)
    from lt_utils.runtime.die_with_parent import die_with_parent

    die_with_parent(os.getppid())   # a rank dies with its launcher (and the launcher with the stage)
    job = job_from_dict(json.loads(Path(args.job).read_text()))
    if args.print:
        print(json.dumps(asdict(job), indent=2))
        return 0
    from lt_utils.train import run_train_job

    final = run_train_job(job)
    print(json.dumps({k: final[k] for k in ("step", "tokens", "train_seconds") if k in final}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
