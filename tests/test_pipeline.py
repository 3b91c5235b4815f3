"""The pipeline's command line: --set overrides are validated, recorded and hashed; clashes fail before any run."""

from __future__ import annotations

import pytest
import yaml

from lt_utils.runtime import config as config_lib
from lt_utils.cli import pipeline
from lt_utils.runtime.runs import RunDir
from lt_utils.stages.synthetic_thoughts import SyntheticThoughtsConfig

STAGES = list(pipeline.STAGES)


def test_set_values_are_yaml():
    sets = pipeline.parse_sets(["02_synthetic_thoughts.steps=2000", "02_synthetic_thoughts.arms=[raw_repeat]",
                                "03_bootstrap_em.lr=0.001"], STAGES)
    assert sets == {"02_synthetic_thoughts": {"steps": 2000, "arms": ["raw_repeat"]}, "03_bootstrap_em": {"lr": 0.001}}


@pytest.mark.parametrize("item, named", [
    ("02_synthetic_thoughts.stepz=3", "unknown parameter 'stepz' of 02_synthetic_thoughts"),
    ("05_extra.steps=3", "unknown stage '05_extra'"),
    ("02_synthetic_thoughts=3", "expected STAGE.KEY=VALUE"),
    ("02_synthetic_thoughts.steps", "expected STAGE.KEY=VALUE"),
])
def test_bad_set_is_one_line_naming_it(item, named):
    with pytest.raises(config_lib.ConfigError, match=named) as exc:
        pipeline.parse_sets([item], STAGES)
    assert "\n" not in str(exc.value)


def test_set_of_a_stage_that_does_not_run():
    with pytest.raises(config_lib.ConfigError, match="does not run"):
        pipeline.parse_sets(["03_bootstrap_em.steps=3"], ["02_synthetic_thoughts"])


def test_set_value_is_validated_like_yaml(tmp_path, capsys):
    rc = pipeline.main(["--profile", "smoke", "--run-root", str(tmp_path), "--set", "02_synthetic_thoughts.steps=many"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'steps' must be int" in err[0]
    assert not (tmp_path / "smoke" / "01_data_prep").exists()


def test_set_is_recorded_and_hashed(tmp_path):
    stage = "02_synthetic_thoughts"
    base = {"run_root": str(tmp_path)}
    plain = config_lib.load(SyntheticThoughtsConfig, pipeline.load_stage_params("smoke", stage, base))
    params = pipeline.load_stage_params("smoke", stage, base, {"steps": plain.steps + 7})
    cfg = config_lib.load(SyntheticThoughtsConfig, params)
    assert config_lib.config_hash(cfg) != config_lib.config_hash(plain)
    run = RunDir.open(cfg, stage)
    assert yaml.safe_load(run.file("config.yaml").read_text())["steps"] == plain.steps + 7
    run.finish()
    # the finished stage now clashes with the profile's own value: refused before any kernel starts
    with pytest.raises(config_lib.ConfigError, match="different parameters"):
        pipeline.check_existing(stage, plain)
    pipeline.check_existing(stage, cfg)   # the same override again is fine


def test_analysis_is_never_refused(tmp_path):
    from lt_utils.report.results import AnalysisConfig

    params = pipeline.load_stage_params("smoke", "04_analysis", {"run_root": str(tmp_path)})
    cfg = config_lib.load(AnalysisConfig, params)
    RunDir.open(cfg, "04_analysis").finish()
    other = config_lib.load(AnalysisConfig, {**params, "headline_arm": "raw_fresh"})
    pipeline.check_existing("04_analysis", other)   # its notebook redoes the stage: nothing to protect


def test_socket_dirs_of_dead_pipelines_are_swept(tmp_path):
    import os
    import subprocess
    import sys

    from lt_utils.cli.pipeline import SOCKET_PREFIX, remove_orphan_socket_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{SOCKET_PREFIX}{dead.pid}-abc"
    mine = tmp_path / f"{SOCKET_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{SOCKET_PREFIX}xyz"
    for d in (orphan, mine, unnamed):
        d.mkdir()
    assert remove_orphan_socket_dirs(tmp_path) == [orphan]
    assert not orphan.exists() and mine.exists() and unnamed.exists()


def test_the_claims_table_ends_a_run_that_included_the_analysis(tmp_path, capsys):
    import shutil

    from lt_utils.runtime.paths import FIGURES_DIR
    from lt_utils.cli.pipeline import print_claims

    out = tmp_path / "smoke" / "04_analysis"
    out.mkdir(parents=True)
    shutil.copy(FIGURES_DIR / "data" / "claims.csv", out / "claims.csv")
    overrides = {"run_root": str(tmp_path), "study": "smoke"}
    print_claims("smoke", overrides, [], ["02_synthetic_thoughts"])     # the analysis did not run: nothing
    assert capsys.readouterr().out == ""
    print_claims("smoke", overrides, ["02_synthetic_thoughts.steps=3"], None)
    lines = capsys.readouterr().out.splitlines()
    assert "claims" in lines[0] and lines[1].split()[:2] == ["claim", "comparison"]
    body = lines[2:]
    assert [ln.split()[0] for ln in body][:2] == ["C1", "C2"] and all(
        any(v in ln for v in ("supported", "reversed", "not measurable")) for ln in body)
