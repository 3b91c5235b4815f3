"""E-step shards as independent jobs (a Slurm array, or any scheduler) and their merge.

    # once: the canonical chunk list and the E-step settings
    python -m lt_utils.paper.estep_jobs prepare --chunks chunks.jsonl --out runs/paper/iter1/estep \\
        --model runs/paper/warmstart/model --num-shards 200 \\
        --config '{"k": 4, "max_thought_tokens": 1024, "seed": 0, "max_prefix_tokens": 1024}'
    # one per shard, anywhere, in any order, each restartable (its SQLite cache keeps finished groups)
    python -m lt_utils.paper.estep_jobs shard --out runs/paper/iter1/estep --shard-index 17 [--backend vllm]
    # once all shards are done
    python -m lt_utils.paper.estep_jobs merge --out runs/paper/iter1/estep

`prepare` copies the chunk list into the output directory and writes
`estep.json` (model path, tokenizer, `EStepConfig`, shard count), so every
shard job reads one frozen description.  A shard runs
`estep.run_estep(..., shard_index=i, num_shards=n)`, whose groups, seeds and
selections do not depend on the sharding, and writes
`shards/shard<i>_of_<n>.jsonl` atomically; a finished shard is skipped.
`merge` refuses to run while a shard is missing and writes `records.jsonl`
(canonical order, identical to an unsharded run) and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from lt_utils.data import Chunk
from lt_utils.estep import EStepConfig, merge_shards, run_estep, save_records, summarize
from lt_utils.runtime.runs import read_json, read_jsonl, write_json, write_jsonl


def shard_path(out: Path, i: int, n: int) -> Path:
    return out / "shards" / f"shard{i:05d}_of_{n:05d}.jsonl"


def prepare(out: str | Path, chunks: list[Chunk], *, model: str, tokenizer: str = "", cfg: EStepConfig,
            num_shards: int) -> Path:
    """Freeze the job description: chunks.jsonl + estep.json in `out`."""
    out = Path(out)
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    write_jsonl(out / "chunks.jsonl", [asdict(c) for c in chunks])
    return write_json(out / "estep.json", {"model": str(model), "tokenizer": str(tokenizer or model),
                                           "config": asdict(cfg), "num_shards": int(num_shards),
                                           "n_chunks": len(chunks)})


def _load(out: Path) -> tuple[dict, list[Chunk], EStepConfig]:
    spec = read_json(out / "estep.json")
    chunks = [Chunk(**r) for r in read_jsonl(out / "chunks.jsonl")]
    if len(chunks) != spec["n_chunks"]:
        raise ValueError(f"{out}/chunks.jsonl has {len(chunks)} chunks, estep.json says {spec['n_chunks']}")
    return spec, chunks, EStepConfig(**spec["config"])


def run_shard(out: str | Path, shard_index: int, *, backend: str = "transformers", device: str = "",
              engine_args: dict | None = None) -> Path:
    """Run one shard (skipped when its file exists); returns the shard's records file."""
    out = Path(out)
    spec, chunks, cfg = _load(out)
    n = spec["num_shards"]
    path = shard_path(out, shard_index, n)
    if path.exists():
        return path
    from lt_utils.estep import model_fingerprint
    from lt_utils.model import load_model
    from lt_utils.tokens import load_tokenizer

    tok = load_tokenizer(spec["tokenizer"])
    key = model_fingerprint(spec["model"])
    cache = out / "cache" / f"shard{shard_index:05d}.sqlite"
    if backend == "vllm":
        from lt_utils.paper.vllm_backend import VLLMBackend

        engine = VLLMBackend(spec["model"], **(engine_args or {}))
        records = run_estep(None, tok, chunks, cfg, backend=engine, cache_path=cache, model_key=key,
                            shard_index=shard_index, num_shards=n)
    elif backend == "transformers":
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        records = run_estep(load_model(spec["model"], device=dev), tok, chunks, cfg, cache_path=cache,
                            model_key=key, shard_index=shard_index, num_shards=n)
    else:
        raise ValueError(f"unknown backend {backend!r} (transformers or vllm)")
    return save_records(path, records)


def missing_shards(out: str | Path) -> list[int]:
    out = Path(out)
    n = read_json(out / "estep.json")["num_shards"]
    return [i for i in range(n) if not shard_path(out, i, n).exists()]


def merge(out: str | Path) -> Path:
    """Concatenate every shard into records.jsonl (canonical order) and write summary.json."""
    out = Path(out)
    spec = read_json(out / "estep.json")
    missing = missing_shards(out)
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {spec['num_shards']} shards not finished "
                                f"(first: {missing[0]}); rerun them before merging")
    n = spec["num_shards"]
    records = merge_shards([shard_path(out, i, n) for i in range(n)])
    if len(records) != spec["n_chunks"]:
        raise ValueError(f"merged {len(records)} records for {spec['n_chunks']} chunks")
    save_records(out / "records.jsonl", records)
    write_json(out / "summary.json", summarize(records))
    return out / "records.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="freeze chunks and settings")
    p.add_argument("--chunks", required=True, help="jsonl of chunks (doc_id, index, prefix, suffix)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", required=True, help="HF checkpoint directory of the thought generator")
    p.add_argument("--tokenizer", default="", help="tokenizer directory (default: the model's)")
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--config", default="{}", help="EStepConfig fields as JSON, e.g. '{\"k\": 4}'")
    s = sub.add_parser("shard", help="run one shard")
    s.add_argument("--out", required=True)
    s.add_argument("--shard-index", type=int, required=True)
    s.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    s.add_argument("--device", default="")
    s.add_argument("--engine-args", default="{}", help="vllm.LLM keyword arguments as JSON")
    m = sub.add_parser("merge", help="merge finished shards")
    m.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        chunks = [Chunk(**r) for r in read_jsonl(args.chunks)]
        prepare(args.out, chunks, model=args.model, tokenizer=args.tokenizer,
                cfg=EStepConfig(**json.loads(args.config)), num_shards=args.num_shards)
    elif args.cmd == "shard":
        print(run_shard(args.out, args.shard_index, backend=args.backend, device=args.device,
                        engine_args=json.loads(args.engine_args)))
    else:
        try:
            print(merge(args.out))
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
