"""Every notebook runs headless under papermill on the smoke profile and leaves a complete record."""

import json

import pandas as pd
import pytest

from lt_utils.cli import pipeline
from lt_utils.runtime.paths import FIGURES_DIR, NOTEBOOKS_DIR


def test_committed_notebooks_have_a_parameters_cell_and_no_outputs():
    import nbformat

    for path in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert not any("def " in c.source or "class " in c.source for c in code), f"{path.name} defines code"


def _cells(stage: str, parameters: dict | None = None) -> list[str]:
    """The sources a kernel runs up to the stage's config: parameters, papermill's injected cell if any, config."""
    import tempfile

    import nbformat
    import papermill as pm

    path = NOTEBOOKS_DIR / f"{stage}.ipynb"
    if parameters is None:
        nb = nbformat.read(path, as_version=4)
    else:   # papermill's own preparation, as run_stage calls it, without starting a kernel
        with tempfile.TemporaryDirectory() as tmp:
            nb = pm.execute_notebook(str(path), f"{tmp}/out.ipynb", parameters=parameters, prepare_only=True,
                                     kernel_name="python3", progress_bar=False)
    end = next(i for i, c in enumerate(nb.cells) if "config" in c.metadata.get("tags", []))
    return [c.source for c in nb.cells[:end + 1] if c.cell_type == "code"]


def _run_cells(sources: list[str], edit: str = "") -> object:
    ns: dict = {}
    for i, src in enumerate(sources):
        exec(src + ("\n" + edit if i == 0 and edit else ""), ns)   # `edit`: what a user types into the cell
    return ns["cfg"]


def test_parameters_cell_holds_only_the_profile_and_overrides():
    """Every other field comes from the profile's params file or the dataclass: each default is stated once."""
    import ast

    import nbformat

    for stage in pipeline.STAGES:
        nb = nbformat.read(NOTEBOOKS_DIR / f"{stage}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
        assert names == {"profile", "overrides"}, (stage, sorted(names))


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
@pytest.mark.parametrize("stage", pipeline.STAGES)
def test_a_notebook_stepped_through_is_the_same_stage_as_a_batch_run(stage, profile):
    """Run top to bottom in Jupyter (smoke: untouched; cpu: one edit) or by the pipeline: one config, one hash."""
    from lt_utils.runtime import config as config_lib

    expected = config_lib.load(pipeline.stage_config_class(stage), pipeline.load_stage_params(profile, stage))
    edit = "" if profile == "smoke" else f'profile = "{profile}"'
    stepped = _run_cells(_cells(stage), edit)
    injected = {**pipeline.load_stage_params(profile, stage), "profile": profile}   # what run_stage passes
    batch = _run_cells(_cells(stage, injected))
    assert config_lib.to_dict(stepped) == config_lib.to_dict(batch) == config_lib.to_dict(expected)
    assert config_lib.config_hash(stepped) == config_lib.config_hash(batch) == config_lib.config_hash(expected)


def test_overrides_and_papermill_parameters_change_the_profile_the_same_way():
    from lt_utils.runtime.config import ConfigError

    stage = "02_synthetic_thoughts"
    by_cell = _run_cells(_cells(stage), 'overrides = {"steps": 7}')
    by_papermill = _run_cells(_cells(stage, {"steps": 7}))
    assert by_cell == by_papermill and by_cell.steps == 7
    with pytest.raises(ConfigError, match="unknown parameter 'stpes'"):
        _run_cells(_cells(stage), 'overrides = {"stpes": 7}')
    with pytest.raises(ConfigError, match="params file not found: .*params/nowhere/02_synthetic_thoughts.yaml"):
        _run_cells(_cells(stage), 'profile = "nowhere"')


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook(tmp_path):
    before = sorted(p.name for p in FIGURES_DIR.glob("*")) if FIGURES_DIR.exists() else []
    rc = pipeline.main(["--profile", "smoke", "--run-root", str(tmp_path)])
    assert rc == 0
    study = tmp_path / "smoke"
    for stage in pipeline.profile_stages("smoke"):
        d = study / stage
        assert (d / "DONE").exists(), stage
        assert (d / "executed.ipynb").exists() and (d / "config.yaml").exists() and (d / "env.json").exists()
        manifest = json.loads((d / "manifest.json").read_text())["artifacts"]
        assert all((d / a).exists() for a in manifest)
    # every training run of stages 02 and 03 continued the study's base model (init: base in params/smoke)
    base = json.loads((study / "01_data_prep" / "base.json").read_text())
    assert (tmp_path / "base" / base["hash"] / "DONE").exists()
    run_jsons = sorted(study.glob("0[23]_*/train/*/seed*/run.json"))
    assert len(run_jsons) >= 13
    assert all(json.loads(r.read_text())["model"]["init_from"] == base["model"] for r in run_jsons)
    res = pd.read_csv(study / "04_analysis" / "results.csv")
    synth = res[res["stage"] == "02_synthetic_thoughts"]
    assert set(synth["arm"]) == {"raw_repeat", "raw_fresh", "wrap_orig", "wrap_cot", "latent_thoughts",
                                 "latent_err0.5"}
    quality = json.loads((study / "02_synthetic_thoughts" / "teacher_quality_comparison_latent_err0.5.json")
                         .read_text())
    assert quality["error_rate"] == 0.5 and quality["fraction_correct"] < 1.0
    run_info = json.loads((study / "02_synthetic_thoughts" / "train" / "wrap_cot" / "seed0" / "run.json").read_text())
    assert run_info["eval"]["style"] == "cot" and 1 <= run_info["eval"]["shots"] <= 2
    assert run_info["eval"]["dev_problems"] == 20 and run_info["eval"]["test_problems"] == 60
    shots = {json.loads(p.read_text())["eval"]["shots"] for p in study.rglob("train/*/seed*/run.json")}
    assert shots == {run_info["eval"]["shots"]}          # every arm of both stages sees as many exemplars
    latent = json.loads((study / "02_synthetic_thoughts" / "train" / "latent_thoughts" / "seed0" / "run.json")
                        .read_text())
    assert latent["packing"]["share_apart"] == 0 and latent["packing"]["share_apart_row_cuts"] > 0
    assert set(res["split"]) == {"dev", "test"}
    em = res[res["stage"] == "03_bootstrap_em"]
    assert {"warmstart", "bolt_iter1", "bolt_iter2", "bolt_iter1_k1", "bolt_iter1_k2", "raw_token_match",
            "raw_flop_match"} == set(em["arm"])
    assert (em.loc[em["arm"] == "raw_token_match", "tokens"].max() < em.loc[em["arm"] == "raw_flop_match",
                                                                            "tokens"].max())
    summary = json.loads((study / "03_bootstrap_em" / "iter1" / "estep_summary.json").read_text())
    assert summary["k"] == 4 and set(summary["selected_correct_by_k"]) == {"1", "2", "4"}
    assert {"tokens", "raw_tokens", "accuracy", "val_nll", "seed", "step"} <= set(res.columns)
    figs = study / "04_analysis" / "figures"
    elbo = json.loads((study / "03_bootstrap_em" / "elbo" / "iter1.json").read_text())
    assert {"elbo_per_token", "elbo_finite_per_token", "chunks_without_finite_bound"} <= set(elbo)
    for name in ("accuracy_vs_tokens", "accuracy_vs_effective_raw_tokens", "accuracy_vs_tokens_by_family",
                 "teacher_quality_sweep", "em_accuracy_vs_iteration", "em_thought_quality_and_elbo",
                 "em_k_ablation"):
        assert (figs / f"{name}.png").stat().st_size > 0 and (figs / f"{name}.pdf").stat().st_size > 0
    # the tables beside the figures redraw them byte for byte
    from lt_utils.report import redraw
    redrawn = redraw.draw(figs / "data", tmp_path / "redrawn")
    assert set(redrawn) == {p.stem for p in figs.glob("*.png")} and len(redrawn) >= 7   # every drawn figure
    for name, files in redrawn.items():
        assert [f.read_bytes() for f in files] == [(figs / f.name).read_bytes() for f in files], name
    # every stage records its peak memory and disk footprint
    log = json.loads((study / "pipeline.json").read_text())
    assert all(log[s]["peak_rss_mb"]["process"] > 0 and log[s]["disk_bytes"] > 0 for s in pipeline.STAGES)
    assert log["study_disk_bytes"] >= sum(log[s]["disk_bytes"] for s in pipeline.STAGES)
    after = sorted(p.name for p in FIGURES_DIR.glob("*")) if FIGURES_DIR.exists() else []
    assert before == after  # smoke runs never write over the committed figures
    # a second run reuses every finished stage (and the analysis is rebuilt from stored results)
    assert pipeline.main(["--profile", "smoke", "--run-root", str(tmp_path)]) == 0


def test_missing_input_stage_fails_with_one_line(tmp_path, capsys):
    rc = pipeline.main(["--profile", "smoke", "--run-root", str(tmp_path), "--only", "02_synthetic_thoughts"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert "MissingInputError" in err and "01_data_prep" in err and len(err.splitlines()) == 1
