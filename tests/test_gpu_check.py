"""The GPU check script: FLOP counting, the peak table, and its CPU dry run (the GPU run itself needs a card)."""

import json

import pytest
import torch

from lt_utils.paper import gpu_check
from lt_utils.paper.gpu_check import TINY, ArchSpec, build, flops_per_token, matmul_params, peak_flops


def test_peak_table_names_the_cards():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Tesla T4") is None


def test_tinyllama_architecture_and_flops():
    arch = ArchSpec()
    model = build(arch, device="meta")  # shapes only, no memory
    total = sum(p.numel() for p in model.parameters())
    assert 1.09e9 < total < 1.11e9  # TinyLlama-1.1B (+ 4 latent-token rows in each embedding)
    n = matmul_params(model)
    assert n == total - 32004 * 2048
    per_tok = flops_per_token(arch, n)
    assert per_tok == 6 * n + 12 * 22 * 32 * 64 * 2048
    assert 7.30e9 < per_tok < 7.33e9  # 6.21 GFLOP of matmuls + 1.11 GFLOP of attention at T = 2048


def test_dry_run_writes_a_report(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--skip-smoke", "--peak-tflops", "1", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["device"] == "cpu" and rep["arch"]["num_layers"] == TINY.num_layers
    tr = rep["training"]
    assert tr["tokens"] == tr["batch_size"] * TINY.seq_len * tr["steps"] and tr["tokens_per_s"] > 0
    assert 5 < tr["final_loss"] < 7.5  # ≈ ln(512) = 6.2 at random init
    assert tr["mfu"] == pytest.approx(tr["flops_per_token"] * tr["tokens_per_s"] / 1e12)
    assert "MFU" in capsys.readouterr().out


def test_refuses_without_cuda_unless_dry_run(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--skip-smoke", "--out", str(tmp_path / "r.json")]) == 2
