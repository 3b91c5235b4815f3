"""GPU check: training throughput and MFU of the TinyLlama-1.1B architecture, then the smoke study on the GPU.

    python -m lt_utils.paper.gpu_check                    # CUDA machine: MFU measurement, then the smoke study
    python -m lt_utils.paper.gpu_check --compile          # the same with torch.compile
    python -m lt_utils.paper.gpu_check --dry-run          # any machine: tiny config on CPU, checks the script itself

The paper trains TinyLlama-1.1B (22 layers, d 2048, 32 heads / 4 KV heads,
FFN 5632, untied, vocab 32,004 with the latent tokens) at sequence length
2048 in bf16.  This script times a few optimizer steps of that architecture
from random init, with the same pieces as `lt_utils.train` (transformers'
`LlamaForCausalLM` with SDPA attention, fused AdamW, bf16 autocast over fp32
weights, or pure bf16 weights with ``--precision bf16``), on random tokens.

Model FLOPs per token are counted as in PaLM (Chowdhery et al. 2022, app. B)
and nanoGPT: 6·N for the matmuls (N = parameters without the input embedding,
whose lookup is not a matmul; the untied LM head is counted) plus 12·L·H·Q·T
for attention scores and values (L layers, H heads, head size Q, sequence T;
the causal half that kernels skip is still counted, as those references do).
MFU = FLOPs per token × tokens/s ÷ the card's peak dense bf16 FLOP/s from the
table below (``--peak-tflops`` overrides it; unknown cards get no MFU).

Results go to stdout and to ``--out`` (JSON), with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Peak dense bf16 tensor-core FLOP/s (vendor datasheets, without sparsity).  Matched by substring of
# torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),
    ("H100", 989e12),   # SXM
    ("A100", 312e12),
)


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


@dataclass(frozen=True)
class ArchSpec:
    """A Llama architecture to time (defaults: TinyLlama-1.1B with the four latent tokens)."""

    vocab_size: int = 32004
    hidden_size: int = 2048
    num_layers: int = 22
    num_heads: int = 32
    num_kv_heads: int = 4
    intermediate_size: int = 5632
    seq_len: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


TINY = ArchSpec(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                seq_len=64)


def build(arch: ArchSpec, device="cpu", dtype=torch.float32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
                      num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
                      intermediate_size=arch.intermediate_size, max_position_embeddings=arch.seq_len,
                      tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0, attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all but the input embedding table."""
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def flops_per_token(arch: ArchSpec, n_matmul_params: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·H·Q·T (forward + backward)."""
    return 6.0 * n_matmul_params + 12.0 * arch.num_layers * arch.num_heads * arch.head_dim * arch.seq_len


def time_training(arch: ArchSpec, *, device: str, batch_size: int, steps: int, warmup: int, precision: str,
                  compile: bool, seed: int = 0) -> dict:
    """Tokens/s over `steps` optimizer steps after `warmup` (forward, backward, clip, AdamW step)."""
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = build(arch, device=device, dtype=dtype, seed=seed)
    n_params = matmul_params(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, eps=1e-8,
                            fused=cuda)
    step_fn = torch.compile(model) if compile else model
    gen = torch.Generator(device="cpu").manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and precision == "autocast") \
        else torch.autocast("cpu", enabled=False)

    def one_step() -> float:
        ids = torch.randint(0, arch.vocab_size, (batch_size, arch.seq_len), generator=gen).to(device)
        with autocast:
            loss = step_fn(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(warmup):
        one_step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = [one_step() for _ in range(steps)]
    sync()
    dt = time.perf_counter() - t0
    tokens = batch_size * arch.seq_len * steps
    out = {"batch_size": batch_size, "steps": steps, "warmup_steps": warmup, "warmup_seconds": warm_s,
           "seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt, "matmul_params": n_params,
           "flops_per_token": flops_per_token(arch, n_params), "final_loss": losses[-1]}
    if cuda:
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def time_with_backoff(arch: ArchSpec, *, batch_size: int, **kw) -> dict:
    """`time_training`, halving the micro-batch on CUDA out-of-memory."""
    while True:
        try:
            return time_training(arch, batch_size=batch_size, **kw)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"out of memory; retrying with batch size {batch_size}", flush=True)


def run_smoke(run_root: Path) -> dict:
    """The smoke profile through the pipeline, on whatever device the library picks (CUDA here)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lt_utils.cli.pipeline", "--profile", "smoke", "--run-root",
                           str(run_root)], capture_output=True, text=True)
    out = {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "run_root": str(run_root),
           "tail": (proc.stdout + proc.stderr)[-2000:]}
    timings = list(run_root.glob("*/pipeline.json"))
    if timings:
        out["stages"] = json.loads(timings[0].read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny config on CPU (no GPU needed)")
    ap.add_argument("--batch-size", type=int, default=8, help="micro-batch (rows of seq_len); halved on OOM")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--precision", choices=("autocast", "bf16", "fp32"), default="autocast",
                    help="autocast: fp32 weights + bf16 compute (our trainer); bf16: bf16 weights")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the card (default: table)")
    ap.add_argument("--skip-smoke", action="store_true", help="only the MFU measurement")
    ap.add_argument("--run-root", help="where the smoke study writes (default: a temporary directory)")
    ap.add_argument("--out", default="runs/gpu_check.json", help="JSON report")
    args = ap.parse_args(argv)

    if args.dry_run:
        arch, device, precision = TINY, "cpu", "fp32"
        args.batch_size, args.steps, args.warmup = min(args.batch_size, 2), min(args.steps, 2), min(args.warmup, 1)
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device (use --dry-run to check the script on CPU)", file=sys.stderr)
            return 2
        arch, device, precision = ArchSpec(), "cuda", args.precision
        torch.backends.cuda.matmul.allow_tf32 = False  # as the paper's runs: bf16 matmuls, fp32 without TF32
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops(name) if device == "cuda" else None)
    report = {"device": name, "torch": torch.__version__, "arch": asdict(arch), "precision": precision,
              "compile": args.compile, "peak_flops": peak}
    print(f"device: {name}; {arch.num_layers} layers, d {arch.hidden_size}, seq {arch.seq_len}; {precision}"
          f"{' + compile' if args.compile else ''}", flush=True)
    res = time_with_backoff(arch, batch_size=args.batch_size, device=device, steps=args.steps, warmup=args.warmup,
                            precision=precision, compile=args.compile)
    res["model_flops_per_s"] = res["flops_per_token"] * res["tokens_per_s"]
    res["mfu"] = res["model_flops_per_s"] / peak if peak else None
    report["training"] = res
    mfu = f"{res['mfu']:.1%}" if res["mfu"] is not None else "n/a (unknown peak; pass --peak-tflops)"
    print(f"training: {res['tokens_per_s']:,.0f} tokens/s, {res['model_flops_per_s'] / 1e12:.1f} TFLOP/s, "
          f"MFU {mfu} (batch {res['batch_size']} × {arch.seq_len})", flush=True)
    del res
    if device == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_smoke:
        root = Path(args.run_root) if args.run_root else Path(tempfile.mkdtemp(prefix="gpu_check_"))
        smoke = run_smoke(root)
        report["smoke"] = smoke
        print(f"smoke study: exit {smoke['returncode']} in {smoke['seconds']:.0f} s ({root})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")
    return 0 if report.get("smoke", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
