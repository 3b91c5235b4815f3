"""The fault sweep's comparison, and (marked `faults`, run by `make faults` only) the sweep itself."""

from __future__ import annotations

import json
import os

import pytest

from lt_utils.cli import fault_sweep


def _study(root, record):
    d = root / "smoke" / "03_bootstrap_em" / "iter1"
    d.mkdir(parents=True)
    (d / "estep_summary.json").write_text(json.dumps(record))
    (root / "smoke" / "progress.jsonl").write_text(json.dumps({"time": os.getpid()}) + "\n")
    return root


def test_compare_ignores_wall_clock_fields_only(tmp_path):
    clean = _study(tmp_path / "a", {"mean_ess": 2.5, "seconds": 10.0, "out": str(tmp_path / "a")})
    same = _study(tmp_path / "b", {"mean_ess": 2.5, "seconds": 99.0, "out": str(tmp_path / "b")})
    other = _study(tmp_path / "c", {"mean_ess": 2.6, "seconds": 10.0, "out": str(tmp_path / "c")})
    assert fault_sweep.compare(clean, same) == []
    assert fault_sweep.compare(clean, other) == ["03_bootstrap_em/iter1/estep_summary.json"]


@pytest.mark.faults
@pytest.mark.skipif(not os.environ.get("LT_FAULT_SWEEP"), reason="set LT_FAULT_SWEEP=1, or run make faults")
def test_fault_sweep():
    assert fault_sweep.main([]) == 0
