"""Run the study's notebooks headless with papermill, one profile at a time.

    python -m lt_utils.pipeline --profile cpu            # the default CPU study
    python -m lt_utils.pipeline --profile smoke          # every notebook on tiny settings
    python -m lt_utils.pipeline --profile cpu --only 04_analysis
    python -m lt_utils.pipeline --profile smoke --run-root /tmp/runs

Each params file is validated against its stage's config *before* anything
runs, so a bad key fails in a second with one line.  The executed notebook is
saved into the stage's run directory; wall times go to
`runs/<study>/pipeline.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import yaml

from . import config as config_lib
from .paths import NOTEBOOKS_DIR, PARAMS_DIR, resolve
from .runs import disk_bytes, read_json, stage_footprint, write_json

STAGES = ("01_data_prep", "02_synthetic_thoughts", "03_bootstrap_em", "04_analysis")


def profile_stages(profile: str) -> list[str]:
    """The stages a profile runs: those with a params file in params/<profile>/, in order."""
    return [s for s in STAGES if (PARAMS_DIR / profile / f"{s}.yaml").is_file()]


def stage_config_class(stage: str):
    from .bootstrap import BootstrapConfig
    from .comparison import SyntheticThoughtsConfig
    from .corpus import DataPrepConfig
    from .results import AnalysisConfig

    classes = {"01_data_prep": DataPrepConfig, "02_synthetic_thoughts": SyntheticThoughtsConfig,
               "03_bootstrap_em": BootstrapConfig, "04_analysis": AnalysisConfig}
    if stage not in classes:
        raise config_lib.ConfigError(f"unknown stage '{stage}' (known: {', '.join(STAGES)})")
    return classes[stage]


def load_stage_params(profile: str, stage: str, overrides: dict | None = None) -> dict:
    """The stage's params file merged with overrides, validated (raises ConfigError in one line)."""
    path = PARAMS_DIR / profile / f"{stage}.yaml"
    if not path.is_file():
        raise config_lib.ConfigError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise config_lib.ConfigError(f"{path}: expected a mapping of parameter names to values")
    fields = {f.name for f in dataclasses.fields(stage_config_class(stage))}
    params.update({k: v for k, v in (overrides or {}).items() if k in fields})
    config_lib.load(stage_config_class(stage), params, where=str(path))
    return params


def run_stage(profile: str, stage: str, overrides: dict | None = None) -> float:
    """Execute one notebook with papermill; returns its wall time in seconds."""
    import papermill as pm

    params = load_stage_params(profile, stage, overrides)
    cfg = config_lib.load(stage_config_class(stage), params)
    out_dir = resolve(cfg.run_root) / cfg.study / stage
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{stage}.ipynb"), str(out_dir / "executed.ipynb"),
                        parameters=params, cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=True,
                        kernel_name="python3")
    return time.perf_counter() - t0


def run_profile(profile: str, only: list[str] | None = None, overrides: dict | None = None) -> dict[str, float]:
    stages = [s for s in profile_stages(profile) if not only or s in only]
    unknown = [s for s in (only or []) if s not in STAGES]
    if unknown:
        raise config_lib.ConfigError(f"unknown stage '{unknown[0]}' (known: {', '.join(STAGES)})")
    if not stages:
        raise config_lib.ConfigError(f"params/{profile}/ has no params file for the requested stages")
    for s in stages:  # validate everything first: a typo in the last stage should not cost the first one's time
        load_stage_params(profile, s, overrides)
    first = config_lib.load(stage_config_class(stages[0]), load_stage_params(profile, stages[0], overrides))
    log = resolve(first.run_root) / first.study / "pipeline.json"
    times = {}
    for s in stages:
        print(f"[{profile}] {s} ...", flush=True)
        times[s] = run_stage(profile, s, overrides)
        print(f"[{profile}] {s} done in {times[s]:.0f} s", flush=True)
        history = read_json(log) if log.exists() else {}
        history[s] = {"seconds": round(times[s], 1), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      **stage_footprint(log.parent / s)}
        history["study_disk_bytes"] = disk_bytes(log.parent)
        write_json(log, history)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="params/<profile>/ (smoke, cpu, paper)")
    ap.add_argument("--only", nargs="*", help=f"stages to run (default: every stage with a params file; {' '.join(STAGES)})")
    ap.add_argument("--run-root", help="override run_root for every stage")
    ap.add_argument("--study", help="override the study name for every stage")
    ap.add_argument("--overwrite", action="store_true", help="redo finished stages")
    args = ap.parse_args(argv)
    overrides: dict = {}
    if args.run_root:
        overrides["run_root"] = args.run_root
    if args.study:
        overrides["study"] = args.study
    if args.overwrite:
        overrides["overwrite"] = True
    if args.run_root or args.study:
        overrides["figures_dir"] = ""  # an ad-hoc study never writes over the committed figures/
    if not (PARAMS_DIR / args.profile).is_dir():
        print(f"error: unknown profile '{args.profile}' (no directory {PARAMS_DIR / args.profile})", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        times = run_profile(args.profile, args.only, overrides)
    except config_lib.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # papermill's error carries the notebook's exception name and message
        name = getattr(exc, "ename", type(exc).__name__)
        value = getattr(exc, "evalue", str(exc)).strip().splitlines()
        print(f"error: {name}: {value[0] if value else ''}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    print(f"[{args.profile}] all stages done in {total:.0f} s ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
