"""The compute estimate counts what the params say (steps, batch, GPUs, runs) and FLOPs as the GPU check does."""

import yaml

from lt_utils.cli.compute_estimate import Assumptions, estimate, gpus_of, main, matmul_params, train_flops_per_token
from lt_utils.paper.gpu_check import TINY, ArchSpec, build, flops_per_token
from lt_utils.paper.gpu_check import matmul_params as measured_matmul_params
from lt_utils.runtime.paths import PARAMS_DIR


def test_parameter_and_flop_counts_match_a_built_model():
    assert matmul_params(TINY) == measured_matmul_params(build(TINY))
    assert train_flops_per_token(TINY) == flops_per_token(TINY, measured_matmul_params(build(TINY)))
    assert 1.034e9 < matmul_params(ArchSpec()) < 1.035e9            # TinyLlama-1.1B without its input embedding


def test_launcher_gpus():
    assert gpus_of("accelerate launch --config_file x.yaml --num_processes 8") == 8
    assert gpus_of("torchrun --nproc_per_node=4") == 4 and gpus_of("") == 1


def test_paper_profile_budgets():
    params = {p.stem: yaml.safe_load(p.read_text()) for p in (PARAMS_DIR / "paper").glob("0*.yaml")}
    est = estimate(params, ArchSpec(), Assumptions(mfu=0.5))
    rows = {r["work"]: r for r in est["rows"]}
    s02, s03 = params["02_synthetic_thoughts"], params["03_bootstrap_em"]
    assert rows["training: every arm x seed"]["tokens"] == 5 * s02["steps"] * 24 * 2048 * 4   # 8.0B per arm
    m = rows[f"M-steps ({s03['iterations']} iterations)"]
    assert m["runs"] == 12 and round(m["tokens"] / m["runs"] / 1e9, 1) == 13.0                 # 13B per M-step
    hours = m["tokens"] * est["flops_per_token"] / (989e12 * 0.5) / 3600
    assert abs(m["gpu_hours"] - hours) < 1e-6
    assert est["api"]["latent thoughts"]["usd"] > 0


def test_cli_prints_a_table(capsys):
    assert main(["--profile", "paper"]) == 0
    assert "| **total** |" in capsys.readouterr().out
    assert main(["--profile", "nope"]) == 2
