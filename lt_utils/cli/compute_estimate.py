"""What a profile's budgets cost: training tokens, FLOPs and GPU-hours, E-step tokens, teacher API tokens.

    python -m lt_utils.cli.compute_estimate --profile paper                    # the paper-scale profile
    python -m lt_utils.cli.compute_estimate --profile paper --mfu 0.45 --gen-tokens-per-s 20000

Everything is read from `params/<profile>/`: steps, batch, gradient
accumulation, the GPUs named in each stage's `launcher`, seeds, arms,
iterations, K and the corpus budgets.  Three numbers are not in the params
and are arguments, with the paper's values or our assumptions as defaults:

* `--mfu`: model FLOPs utilisation of training (default 0.40; `make
  gpu-check` measures it on a card);
* `--gen-tokens-per-s`: E-step thought tokens generated per second per GPU
  by vLLM (default 15,000 for a 1.1B model; an assumption, not a
  measurement);
* `--thought-ratio`: thought tokens per raw token (2.3 for GPT-4o-mini's
  thoughts, about 2.4 for bootstrapped ones, per the paper's token counts).

FLOPs per training token are 6·N + 12·L·H·Q·T (N = matmul parameters, as in
`gpu_check`); a forward-only pass (E-step scoring) is a third of that.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass

from lt_utils import em_plan
from lt_utils.paper.gpu_check import ArchSpec


@dataclass(frozen=True)
class Assumptions:
    mfu: float = 0.40                  # training FLOPs utilisation
    peak_flops: float = 989e12         # dense bf16, H100 SXM / H200
    gen_tokens_per_s: float = 15000.0  # E-step generation per GPU (vLLM)
    thought_ratio: float = 2.4         # thought tokens per raw token
    latent_ratio: float = 3.39         # training tokens per raw token of a latent corpus (13B / 3.84B in the paper)
    tokens_per_sentence: float = 25.0  # for counting chunks
    prompt_overhead_tokens: int = 350  # instructions around each teacher request


def matmul_params(arch: ArchSpec, tied: bool = False) -> int:
    """Parameters that take part in matmuls (all but the input embedding) of a Llama architecture."""
    d, q = arch.hidden_size, arch.head_dim
    attn = 2 * d * d + 2 * d * arch.num_kv_heads * q
    mlp = 3 * d * arch.intermediate_size
    per_layer = attn + mlp + 2 * d
    return arch.num_layers * per_layer + d + (0 if tied else arch.vocab_size * d)


def train_flops_per_token(arch: ArchSpec) -> float:
    return 6.0 * matmul_params(arch) + 12.0 * arch.num_layers * arch.num_heads * arch.head_dim * arch.seq_len


def gpus_of(launcher: str) -> int:
    """GPUs a stage's launcher asks for (its --num_processes, else --nproc_per_node), 1 without a launcher."""
    m = re.search(r"--(?:num_processes|nproc_per_node)[ =](\d+)", launcher or "")
    return int(m.group(1)) if m else 1


def _tokens_per_step(p: dict) -> int:
    return int(p.get("batch_size", 8)) * int(p.get("grad_accum", 1)) * int(p.get("seq_len", 256)) * \
        gpus_of(p.get("launcher", ""))


def estimate(params: dict[str, dict], arch: ArchSpec, a: Assumptions = Assumptions()) -> dict:
    """Tokens, FLOPs and hours per item of work, from the stage params of one profile."""
    fpt = train_flops_per_token(arch)
    rows: list[dict] = []

    def train_row(stage: str, what: str, runs: int, steps: float, p: dict) -> None:
        tokens = runs * steps * _tokens_per_step(p)
        gpus = gpus_of(p.get("launcher", ""))
        hours = tokens * fpt / (a.peak_flops * a.mfu) / 3600
        rows.append({"stage": stage, "work": what, "runs": runs, "tokens": tokens, "gpus_per_run": gpus,
                     "gpu_hours": hours, "wall_hours_per_run": hours / max(runs, 1) / gpus})

    data = params.get("01_data_prep", {})
    s02 = params.get("02_synthetic_thoughts")
    if s02:
        from lt_utils.stages.synthetic_thoughts import run_count

        runs = run_count(s02.get("arms", []), s02.get("teacher_sweep", []), s02.get("seeds", [0]),
                         s02.get("arm_seeds", {}))
        train_row("02", "training: every arm x seed", runs, s02["steps"], s02)
    s03 = params.get("03_bootstrap_em")
    if s03:
        from lt_utils.runtime.config import load
        from lt_utils.stages.bootstrap_em import BootstrapConfig

        cfg = load(BootstrapConfig, s03, where="03_bootstrap_em")   # the stage's own defaults, not literals here
        its = cfg.iterations
        groups: dict[str, list] = {}
        for r in em_plan.all_runs(cfg):
            what = {"warmstart": "warmstart", "m_step": f"M-steps ({its} iterations)",
                    "k_ablation": f"K ablation {sorted(set(cfg.k_ablation) - {cfg.k})}"}.get(r.role) \
                or {"raw_token_match": "raw token-match baseline", "raw_flop_match": "raw FLOP-match baseline"}[r.arm]
            steps = cfg.steps / a.latent_ratio if r.steps_of == em_plan.TOKEN_MATCH else r.steps(cfg)
            groups.setdefault(what, []).append(steps)
        for what, steps in groups.items():
            train_row("03", what, len(steps), steps[0], s03)
        raw = float(data.get("bootstrap_tokens", 0))
        samples = sum(em_plan.k_drawn(cfg, i) for i in range(1, its + 1))   # per chunk, over every E-step
        gen = raw * a.thought_ratio * samples
        prefix = min(3 * 8 * a.tokens_per_sentence, cfg.max_prefix_tokens or 1e12) * cfg.prefix_chunks / 3
        chunks = raw / (cfg.chunk_mean_units * a.tokens_per_sentence)
        scored = samples * (raw * (a.thought_ratio + 1) + chunks * prefix)
        hours = gen / a.gen_tokens_per_s / 3600 + scored * fpt / 3 / (a.peak_flops * a.mfu) / 3600
        rows.append({"stage": "03", "work": f"E-steps: sample + score ({its} iterations)", "runs": its,
                     "tokens": gen, "gpus_per_run": cfg.estep_shards or 1, "gpu_hours": hours,
                     "wall_hours_per_run": hours / its / max(cfg.estep_shards, 1)})
    api = {}
    if s02 and s02.get("teacher") == "api":
        raw = float(data.get("comparison_tokens", 0))
        chunks = raw / (float(s02.get("chunk_mean_units", 8)) * a.tokens_per_sentence)
        docs = raw / 400.0   # FineMath-4+ documents average about 400 tokens (480M tokens, 1.2M docs)
        opts = s02.get("teacher_options", {})
        work = {"latent thoughts": (raw * (1 + int(s02.get("prefix_chunks", 1))) + chunks * a.prompt_overhead_tokens,
                                    raw * 2.3)}
        if "wrap_orig" in s02.get("arms", []):
            n = int(s02.get("wrap_orig_repeats", 5))
            work["WRAP-Orig rewrites"] = (n * (raw + docs * 60), n * raw * 0.48)
        if "wrap_cot" in s02.get("arms", []):
            n = int(s02.get("wrap_cot_repeats", 4))
            work["WRAP-CoT rewrites"] = (n * (raw + docs * 80), n * raw * 0.70)
        for what, (tin, tout) in work.items():
            api[what] = {"input_tokens": tin, "output_tokens": tout,
                         "usd": tin / 1e3 * float(opts.get("price_per_1k_input", 0))
                         + tout / 1e3 * float(opts.get("price_per_1k_output", 0))}
    return {"flops_per_token": fpt, "assumptions": a.__dict__, "rows": rows, "api": api,
            "total_gpu_hours": sum(r["gpu_hours"] for r in rows)}


def table(est: dict) -> str:
    lines = ["| stage | work | runs | tokens | GPUs per run | GPU-hours | wall hours per run |",
             "|---|---|---|---|---|---|---|"]
    for r in est["rows"]:
        lines.append(f"| {r['stage']} | {r['work']} | {r['runs']} | {r['tokens'] / 1e9:,.1f} B | {r['gpus_per_run']} "
                     f"| {r['gpu_hours']:,.0f} | {r['wall_hours_per_run']:,.1f} |")
    lines.append(f"| | **total** | | | | **{est['total_gpu_hours']:,.0f}** | |")
    if est["api"]:
        lines += ["", "| teacher API work | input tokens | output tokens | cost at the params' prices |",
                  "|---|---|---|---|"]
        for what, v in est["api"].items():
            lines.append(f"| {what} | {v['input_tokens'] / 1e9:,.2f} B | {v['output_tokens'] / 1e9:,.2f} B "
                         f"| ${v['usd']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import yaml

    from lt_utils.runtime.paths import PARAMS_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper")
    d = Assumptions()
    ap.add_argument("--mfu", type=float, default=d.mfu)
    ap.add_argument("--peak-tflops", type=float, default=d.peak_flops / 1e12)
    ap.add_argument("--gen-tokens-per-s", type=float, default=d.gen_tokens_per_s)
    ap.add_argument("--thought-ratio", type=float, default=d.thought_ratio)
    ap.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args = ap.parse_args(argv)
    folder = PARAMS_DIR / args.profile
    if not folder.is_dir():
        print(f"error: unknown profile '{args.profile}' (no directory {folder})", file=sys.stderr)
        return 2
    params = {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(folder.glob("0*.yaml"))}
    a = Assumptions(mfu=args.mfu, peak_flops=args.peak_tflops * 1e12, gen_tokens_per_s=args.gen_tokens_per_s,
                    thought_ratio=args.thought_ratio)
    est = estimate(params, ArchSpec(), a)
    if args.json:
        print(json.dumps(est, indent=2))
    else:
        print(f"TinyLlama-1.1B architecture, {est['flops_per_token'] / 1e9:.2f} GFLOP per training token; "
              f"MFU {a.mfu:.0%} of {a.peak_flops / 1e12:.0f} TFLOP/s; E-step generation "
              f"{a.gen_tokens_per_s:,.0f} tokens/s/GPU (assumed)\n")
        print(table(est))
    return 0


if __name__ == "__main__":
    sys.exit(main())
