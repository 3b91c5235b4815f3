"""The loop-gain map: retention ρ and loop gain G = ρλ over a grid of two parameters.

    python -m lt_utils.sweeps.loop_map                          # params/loop_map/map.yaml -> runs/loop_map/<name>/
    python -m lt_utils.sweeps.loop_map --map loop_map_smoke     # a tiny 2 × 2 map (mechanics, not results)
    python -m lt_utils.sweeps.loop_map --redraw                 # figures/data/loop_map.csv -> figures/loop_gain_map.*

Whether bootstrapping improves itself is a question of one number, G (see
`lt_utils.loop_diagnostics`): iterations improve only while G ≥ 1.  The map
measures G, and its factors, for every pair of values of two parameters, by
default the base model's competence (`base_worked_share`, stage 01) × the
M-step budget (`steps`, stage 03).  Either axis may be any stage-01 or stage-03
parameter, so a different axis (e.g. `warmstart_steps`) is a line in the map's
params file.  An optional ablation adds a labelled set of cells with further
overrides (e.g. a tempered proposal, `estep_temperature` < 1, whose log q is
the tempered density; its "posterior sample" correctness is then that of the
tempered samples).

Each cell is the loop cut to what G needs: warmstart → E-step 1 → M-step →
E-step 2, whose loop diagnostics give ρ, λ and G.  The work is not duplicated:
it reuses `bootstrap.Study` (the same E-step, scoring, diagnostics and training
jobs as stage 03) rather than running the stage-03 notebook per cell, because
the notebook runs the whole design (seeds, baselines, K ablation, ELBOs) and
cannot share a warmstart between cells.  Cells share work in three levels,
each an ordinary run directory (config.yaml, metrics.jsonl, manifest, DONE):

* **data** (`<map>/d_<hash>/01_data_prep`): stage 01 with the cell's stage-01
  parameters, the base model included (cached by its key under `<map>/base/`);
* **warmstart** (`<map>/d_<hash>/03_warmstart_<hash>`): the warmstart model,
  keyed by the stage-03 parameters that shape it (not the E-step's or the
  M-step's);
* **E-step 1** (`.../03_estep1_<hash>`): the warmstart's E-step (its model
  linked, not copied), keyed by everything but the M-step budget;
* **cell** (`.../03_cell_<hash>`): the M-step from the base model on E-step 1's
  selected thoughts (copied in), then E-step 2, with `cell.json`.

Fields that do not shape a level are set to their defaults in its config, so a
level's config hash is its identity.  Each level's units run in parallel
worker processes (`workers`, 0 = one per core), one thread each.  The map's
tidy table is `<map>/loop_map.csv`, its figure `<map>/figures/`; with
`figures_dir` set, both are also written as `<figures_dir>/loop_gain_map.*` and
`<figures_dir>/data/loop_map.csv`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lt_utils import em_plan
from lt_utils.runtime.config import ConfigError, load, profile_params, require, to_dict
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve

MAP_FILE = "map.yaml"          # params/<map>/map.yaml
TABLE = "loop_map.csv"
FIGURE = "loop_gain_map"
DATA_STAGE = "01_data_prep"
BASELINE_VARIANT = "paper"     # the cells without the ablation's overrides
# Stage-03 fields that shape only the M-step, or only an E-step (and not the warmstart model).
MSTEP_ONLY = frozenset({"steps"})
ESTEP_ONLY = frozenset({"k", "max_thought_tokens", "estep_batch_chunks", "max_prefix_tokens", "estep_temperature",
                        "ban_special_in_thought", "prior_sample_chunks", "estep_backend", "vllm_engine_args",
                        "estep_shards", "elbo_k"})
# The stage-03 fields when the first maps ran: a level's id hashes these, and a later field only when it is set
# away from its default (`_level_id`).
MAP_ERA_FIELDS = frozenset({
    "n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "tie_embeddings", "init_std", "init_from",
    "init", "batch_size", "grad_accum", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
    "grad_clip", "eval_every", "attend_across_docs", "cut_at_chunks", "max_eval_problems", "eval_dev_problems",
    "eval_shots", "eval_max_new_tokens", "eval_max_prompt_tokens", "eval_samples", "eval_temperature", "workers",
    "threads_per_worker", "launcher", "keep_checkpoints", "study", "run_root", "data_stage", "seeds", "iterations",
    "k", "k_ablation", "max_thought_tokens", "estep_batch_chunks", "elbo_k", "baselines", "chunk_mean_units",
    "chunk_max_units", "prefix_chunks", "warmstart_split", "warmstart_max_docs", "warmstart_thoughts_stage",
    "warmstart_steps", "steps", "max_prefix_tokens", "estep_temperature", "ban_special_in_thought",
    "prior_sample_chunks", "estep_backend", "vllm_engine_args", "estep_shards", "overwrite",
})
# Fields the map sets itself: an axis or an override may not.
RESERVED = frozenset({"study", "run_root", "overwrite", "workers", "threads_per_worker", "iterations", "k_ablation",
                      "baselines", "seeds", "data_stage", "figures_dir"})
# What a cell's stage-03 run is, whatever the profile says: the loop alone, one seed, one process.
CELL_FIXED = {"iterations": 2, "k_ablation": [], "baselines": [], "workers": 1, "threads_per_worker": 1}


@dataclass(frozen=True)
class LoopMapConfig:
    name: str = "loop_map"                  # the map's directory: <run_root>/<name>/
    run_root: str = "runs/loop_map"         # where maps live
    profile: str = "cpu"                    # stage params start from params/<profile>/{01_data_prep,03_bootstrap_em}.yaml
    data_prep: dict[str, Any] = field(default_factory=dict)   # stage-01 overrides of every cell
    bootstrap: dict[str, Any] = field(default_factory=dict)   # stage-03 overrides of every cell
    row_param: str = "base_worked_share"    # the rows' parameter (any stage-01 or stage-03 parameter)
    row_values: list[Any] = field(default_factory=lambda: [0.0, 0.1, 0.3])
    col_param: str = "steps"                # the columns' parameter
    col_values: list[Any] = field(default_factory=lambda: [350, 700, 1400])
    ablation: dict[str, Any] = field(default_factory=dict)    # extra cells with these overrides (e.g. estep_temperature)
    ablation_rows: list[Any] = field(default_factory=list)    # row values that get the ablation (empty: every row)
    workers: int = 0                        # parallel worker processes (0: one per available core)
    figures_dir: str = ""                   # also write the figure and its table here ("" = only inside the map)
    overwrite: bool = False                 # redo the map from nothing

    def __post_init__(self):
        require(bool(self.name) and "/" not in self.name, f"name must be a directory name, got {self.name!r}")
        require(self.row_param != self.col_param, f"row_param and col_param are both '{self.row_param}'")
        for axis in ("row", "col"):
            values = getattr(self, f"{axis}_values")
            require(len(values) > 0, f"{axis}_values must list at least one value")
            require(len({json.dumps(v, sort_keys=True) for v in values}) == len(values),
                    f"{axis}_values: a value is listed twice")
        for name in [self.row_param, self.col_param, *self.ablation]:
            stage_of(name)
        bad = [v for v in self.ablation_rows if v not in self.row_values]
        require(not bad, f"ablation_rows: {bad[0] if bad else ''!r} is not one of row_values")
        require(not self.ablation_rows or bool(self.ablation), "ablation_rows without an ablation")
        require(self.workers >= 0, f"workers must be ≥ 0, got {self.workers}")


def _stage_fields() -> tuple[set[str], set[str]]:
    from lt_utils.stages.bootstrap_em import BootstrapConfig
    from lt_utils.stages.data_prep import DataPrepConfig

    return ({f.name for f in dataclasses.fields(DataPrepConfig)}, {f.name for f in dataclasses.fields(BootstrapConfig)})


def stage_of(param: str) -> str:
    """'01' or '03': the stage whose parameter `param` is (a one-line error for an unknown or reserved name)."""
    data, boot = _stage_fields()
    require(param not in RESERVED, f"'{param}' is set by the map itself and cannot be an axis or override")
    require(param in data or param in boot,
            f"unknown parameter '{param}' (neither a 01_data_prep nor a 03_bootstrap_em parameter)")
    return "01" if param in data else "03"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Cell:
    """One point of the map, with the ids of the data, warmstart and E-step-1 runs it shares."""

    variant: str
    row_value: Any
    col_value: Any
    data_params: dict
    boot_params: dict
    data_id: str
    warm_id: str
    estep_id: str
    cell_id: str

    @property
    def name(self) -> str:
        return f"{self.data_id}/03_cell_{self.cell_id}"


@functools.lru_cache(maxsize=None)
def _defaults(cls) -> dict:
    """A stage's defaults, resolved once (every level id of every cell reads them; callers never mutate them)."""
    return to_dict(load(cls, {"study": "x"}))


def _level_params(boot: dict, drop: frozenset) -> dict:
    """Every stage-03 field: `boot`'s values, those in `drop` at their defaults (they do not shape this level)."""
    from lt_utils.stages.bootstrap_em import BootstrapConfig

    defaults = _defaults(BootstrapConfig)
    return {k: (v if k in drop or k not in boot else boot[k]) for k, v in defaults.items()}


def _level_id(boot: dict, drop: frozenset) -> str:
    """The id of a level's run: the hash of its resolved parameters, where a field added to stage 03 after the
    first maps ran counts only once it leaves its default, so every finished warmstart and E-step stays reusable."""
    from lt_utils.stages.bootstrap_em import BootstrapConfig

    defaults = _defaults(BootstrapConfig)
    params = _level_params(boot, drop)
    return _hash({k: v for k, v in params.items() if k in MAP_ERA_FIELDS or v != defaults[k]})


def expand(cfg: LoopMapConfig) -> list[Cell]:
    """Every cell of the map, in row-major order, the ablation's cells last; validates each cell's stage params."""
    from lt_utils.stages.bootstrap_em import BootstrapConfig
    from lt_utils.stages.data_prep import DataPrepConfig

    root = str(Path(cfg.run_root) / cfg.name)
    data0 = {**profile_params(cfg.profile, DATA_STAGE), **cfg.data_prep}
    boot0 = {**profile_params(cfg.profile, "03_bootstrap_em"), **cfg.bootstrap}
    for section, params, stage in (("data_prep", cfg.data_prep, "01"), ("bootstrap", cfg.bootstrap, "03")):
        wrong = [k for k in params if stage_of(k) != stage]
        require(not wrong, f"{section}: '{wrong[0] if wrong else ''}' is a parameter of the other stage")
    variants = [(BASELINE_VARIANT, {}, cfg.row_values)]
    if cfg.ablation:
        label = ", ".join(f"{k}={v}" for k, v in cfg.ablation.items())
        variants.append((label, dict(cfg.ablation), cfg.ablation_rows or cfg.row_values))
    cells = []
    for variant, extra, rows in variants:
        for rv in rows:
            for cv in cfg.col_values:
                data, boot = dict(data0), dict(boot0)
                for name, value in ((cfg.row_param, rv), (cfg.col_param, cv), *extra.items()):
                    (data if stage_of(name) == "01" else boot)[name] = value
                data = {k: v for k, v in data.items() if k not in ("study", "run_root", "overwrite")}
                data_id = f"d_{_hash(data)}"
                data.update(study=data_id, run_root=root)
                seeds = boot.get("seeds") or [0]
                boot = {k: v for k, v in boot.items() if k not in ("study", "run_root", "overwrite", "figures_dir")}
                boot.update(CELL_FIXED, seeds=[seeds[0]], study=data_id, run_root=root)
                where = f"cell {variant} {cfg.row_param}={rv} {cfg.col_param}={cv}"
                for cls, params, stage in ((DataPrepConfig, data, DATA_STAGE), (BootstrapConfig, boot, "03_bootstrap_em")):
                    try:
                        load(cls, params, where=f"{where} ({stage})")
                    except ConfigError as exc:   # a range check names the field only: add the cell
                        msg = str(exc)
                        raise ConfigError(msg if msg.startswith(where) else f"{where} ({stage}): {msg}") from None
                cells.append(Cell(variant=variant, row_value=rv, col_value=cv, data_params=data, boot_params=boot,
                                  data_id=data_id, warm_id=_level_id(boot, MSTEP_ONLY | ESTEP_ONLY),
                                  estep_id=_level_id(boot, MSTEP_ONLY), cell_id=_hash(boot)))
    return cells


def with_seed(cell: Cell, seed: int) -> Cell:
    """The same cell with its runs seeded `seed` (a map runs seed 0 unless its profile says otherwise): new ids for
    every level, so another seed of a warmstart is a run of its own beside the first."""
    boot = {**cell.boot_params, "seeds": [int(seed)]}
    return dataclasses.replace(cell, boot_params=boot, warm_id=_level_id(boot, MSTEP_ONLY | ESTEP_ONLY),
                               estep_id=_level_id(boot, MSTEP_ONLY), cell_id=_hash(boot))


def _unique(cells: list[Cell], key: str) -> list[Cell]:
    seen: dict[tuple, Cell] = {}
    for c in cells:
        seen.setdefault((c.data_id, getattr(c, key)), c)
    return list(seen.values())


# --------------------------------------------------------------------------- the work of one unit (worker processes)
def _open(params: dict, stage: str):
    from lt_utils.runtime.runs import RunDir
    from lt_utils.stages.bootstrap_em import BootstrapConfig

    cfg = load(BootstrapConfig, params)
    return cfg, RunDir.open(cfg, stage)


def run_data(params: dict) -> str:
    """Stage 01 (corpus, tokenizer, base model) of one data group; returns its directory."""
    from lt_utils.runtime.runs import RunDir
    from lt_utils.stages import base_model, data_prep as corpus

    cfg = load(corpus.DataPrepConfig, params)
    run = RunDir.open(cfg, DATA_STAGE)
    if not run.already_done:
        stats = corpus.build(run, cfg)
        base_model.build(run, cfg)
        run.finish(docs={s: v.get("docs") for s, v in stats.items() if isinstance(v, dict) and "docs" in v})
    return str(run.path)


def run_warmstart(params: dict, warm_id: str) -> str:
    """The warmstart model (seed `seeds[0]`) of one warmstart group."""
    from lt_utils.stages.bootstrap_em import Study

    cfg, run = _open(_level_params(params, MSTEP_ONLY | ESTEP_ONLY), f"03_warmstart_{warm_id}")
    if not run.already_done:
        t0 = time.perf_counter()
        final = Study(run, cfg).warmstart()[0]
        run.log(kind="warmstart", seconds=time.perf_counter() - t0, steps=cfg.warmstart_steps,
                train_seconds=final.get("train_seconds"))
        run.finish()
    return str(run.path)


def _link(target: Path, link: Path) -> None:
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=target.is_dir())


def run_estep1(params: dict, warm_id: str, estep_id: str) -> str:
    """E-step 1 with the shared warmstart model (linked into this run), and its loop diagnostics."""
    from lt_utils.stages.bootstrap_em import Study

    cfg, run = _open(_level_params(params, MSTEP_ONLY), f"03_estep1_{estep_id}")
    if not run.already_done:
        warm = run.path.parent / f"03_warmstart_{warm_id}"
        seed = cfg.seeds[0]
        _link(warm / f"train/warmstart/seed{seed}", run.file(f"train/warmstart/seed{seed}"))
        if not run.file("corpora/warmstart_thoughts.jsonl").exists():   # what ρ of E-step 1 divides by
            run.file("corpora").mkdir(parents=True, exist_ok=True)
            shutil.copy(warm / "corpora/warmstart_thoughts.jsonl", run.file("corpora/warmstart_thoughts.jsonl"))
        t0 = time.perf_counter()
        Study(run, cfg).e_step(1)
        run.log(kind="estep_time", iteration=1, seconds=time.perf_counter() - t0)
        run.finish()
    return str(run.path)


def run_cell(params: dict, estep_id: str, meta: dict) -> dict:
    """The M-step on E-step 1's thoughts, then E-step 2; writes and returns `cell.json`."""
    from lt_utils.runtime.runs import read_json, write_json
    from lt_utils.stages.bootstrap_em import Study

    cfg, run = _open(params, f"03_cell_{meta['cell_id']}")
    if run.already_done:
        return read_json(run.file("cell.json"))
    src = run.path.parent / f"03_estep1_{estep_id}"
    for name in ("iter1/corpus.jsonl", "iter1/estep_summary.json"):
        if not run.file(name).exists():
            run.file(name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, run.file(name))
    study = Study(run, cfg)
    t0 = time.perf_counter()
    final = study.train([study.job_of(em_plan.m_steps(cfg, 1)[0])], "M-step")[0]
    t1 = time.perf_counter()
    s2 = study.e_step(2)
    t2 = time.perf_counter()
    s1 = read_json(run.file("iter1/estep_summary.json"))
    out = {**meta, "estep1": s1, "estep2": s2, "mstep_final": final,
           "seconds": {"mstep": t1 - t0, "estep2": t2 - t1, "estep1": _estep1_seconds(src)}}
    write_json(run.file("cell.json"), out)
    run.add_artifact("cell.json", "the cell: its axis values, both E-steps' summaries, the M-step's final metrics")
    run.finish()
    return out


def _estep1_seconds(estep_dir: Path) -> float | None:
    from lt_utils.runtime.runs import read_jsonl

    secs = [r["seconds"] for r in read_jsonl(estep_dir / "metrics.jsonl") if r.get("kind") == "estep_time"]
    return secs[-1] if secs else None


# --------------------------------------------------------------------------- the table
COLUMNS = ["variant", "row_param", "row_value", "col_param", "col_value", "estep_temperature",
           "warmstart_posterior_correct", "estep1_selected_correct", "estep1_lift", "estep1_rho", "estep1_gain",
           "trained_on_correct", "posterior_sample_correct", "selected_correct", "best_of_k_correct",
           "rho", "lift", "gain", "mstep_steps", "mstep_dev_accuracy", "cell"]


def last_dev_eval(cell_dir: Path) -> dict | None:
    """The M-step model's last evaluation on dev problems: the map is a calibration, so it never reads test."""
    from lt_utils.runtime.runs import read_jsonl

    evals = [r for p in sorted(Path(cell_dir).glob("train/iter1/seed*/metrics.jsonl")) for r in read_jsonl(p)
             if r.get("kind") == "eval" and r.get("split") == "dev"]
    return max(evals, key=lambda r: r["step"]) if evals else None


def cell_row(meta: dict, s1: dict, s2: dict, mstep_dev: dict | None = None) -> dict:
    """One row of the table from a cell's two E-step summaries (their `loop_*` diagnostics).

    ρ, λ and G are those of E-step 2 (the generator trained by the M-step);
    the warmstart's posterior correctness is E-step 1's single-sample
    correctness.
    """
    def loop(s: dict, key: str):
        v = s.get(f"loop_{key}")
        return float(v) if v is not None else float("nan")

    return {"variant": meta["variant"], "row_param": meta["row_param"], "row_value": meta["row_value"],
            "col_param": meta["col_param"], "col_value": meta["col_value"],
            "estep_temperature": meta.get("estep_temperature", 1.0),
            "warmstart_posterior_correct": loop(s1, "posterior_sample_correct"),
            "estep1_selected_correct": loop(s1, "selected_correct"), "estep1_lift": loop(s1, "lift"),
            "estep1_rho": loop(s1, "rho"), "estep1_gain": loop(s1, "gain"),
            "trained_on_correct": loop(s2, "trained_on_correct"),
            "posterior_sample_correct": loop(s2, "posterior_sample_correct"),
            "selected_correct": loop(s2, "selected_correct"), "best_of_k_correct": loop(s2, "best_of_k_correct"),
            "rho": loop(s2, "rho"), "lift": loop(s2, "lift"), "gain": loop(s2, "gain"),
            "mstep_steps": meta.get("mstep_steps"),
            "mstep_dev_accuracy": (mstep_dev or {}).get("accuracy", float("nan")),
            "cell": meta.get("cell", "")}


def build_table(rows: list[dict]):
    """The tidy table (one row per cell, fixed column and row order, so the same results give the same file)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    order = {v: i for i, v in enumerate(dict.fromkeys(df["variant"]))}
    df = df.assign(_v=df["variant"].map(order))
    return df.sort_values(["_v", "row_value", "col_value"], kind="mergesort").drop(columns="_v").reset_index(drop=True)


def write_table(df, path: str | Path) -> Path:
    from lt_utils.report import tables

    return tables.write_table(df, path)


def read_table(path: str | Path):
    from lt_utils.report import tables

    return tables.read_table(path, "the loop-gain map: make loop-map")


def draw(df, out_dir: str | Path) -> list[Path]:
    from lt_utils.report import tables

    return tables.draw(df, out_dir, FIGURE)


# --------------------------------------------------------------------------- what a map costs
@dataclass(frozen=True)
class Rates:
    """Measured costs on one core: a training step, an evaluated problem, a sampled thought; chunks per document."""

    s_per_step: float
    s_per_problem: float
    s_per_sample: float
    chunks_per_doc: float


def measure(map_dir: str | Path) -> Rates:
    """Rates from a finished map whose cells trained at least two M-step budgets (one process, one thread each).

    Training time is a line in the steps (every tiny cell evaluates once, at
    its end): its slope is the cost of a step, its intercept that of one final
    evaluation (dev + test problems, validation NLL included).  An E-step's
    wall time, model load included, is divided by the thoughts it sampled.
    """
    import numpy as np

    from lt_utils.runtime.runs import MissingInputError, read_json

    cells = [(p.parent, read_json(p)) for p in sorted(Path(map_dir).glob("d_*/03_cell_*/cell.json"))]
    steps = sorted({c["mstep_final"]["step"] for _, c in cells})
    if len(steps) < 2:
        raise MissingInputError(f"{map_dir}: measuring needs finished cells of two M-step budgets at least")
    slope, intercept = np.polyfit([c["mstep_final"]["step"] for _, c in cells],
                                  [c["mstep_final"]["train_seconds"] for _, c in cells], 1)
    per_problem, per_sample, per_doc = [], [], []
    for path, c in cells:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        data = yaml.safe_load((path.parent / DATA_STAGE / "config.yaml").read_text())
        if c["mstep_final"]["step"] >= cfg["eval_every"]:
            continue   # evaluated more than once: the intercept is one final evaluation only for the others
        test = cfg["max_eval_problems"] or data["eval_problems"]
        dev = min(cfg["eval_dev_problems"] or data["dev_problems"], data["dev_problems"])
        per_problem.append(intercept / (test + dev))
        s2 = c["estep2"]
        samples = s2["n_chunks"] * s2["k"] + min(cfg["prior_sample_chunks"], s2["n_chunks"])
        per_sample.append(c["seconds"]["estep2"] / samples)
        per_doc.append(s2["n_chunks"] / data["bootstrap_docs"])
    if not per_problem:
        raise MissingInputError(f"{map_dir}: every cell evaluated more than once (raise eval_every to measure)")
    return Rates(s_per_step=float(slope), s_per_problem=float(np.median(per_problem)),
                 s_per_sample=float(np.median(per_sample)), chunks_per_doc=float(np.median(per_doc)))


def _train_seconds(steps: int, boot: dict, data: dict, r: Rates) -> float:
    test = boot.get("max_eval_problems") or data["eval_problems"]
    dev = min(boot.get("eval_dev_problems") or data["dev_problems"], data["dev_problems"])
    every = boot.get("eval_every", 20)
    evals = steps // every + (1 if steps % every else 0)
    return steps * r.s_per_step + (evals * dev + test) * r.s_per_problem


def _estep_seconds(boot: dict, data: dict, r: Rates) -> float:
    chunks = r.chunks_per_doc * data["bootstrap_docs"]
    return (chunks * boot.get("k", 4) + min(boot.get("prior_sample_chunks", 64), chunks)) * r.s_per_sample


def _makespan(times: list[float], workers: int) -> float:
    """Longest-first onto the least-loaded worker: the wall time of one level's units."""
    loads = [0.0] * max(1, workers)
    for t in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads)


def estimate(cfg: LoopMapConfig, rates: Rates, workers: int) -> dict:
    """Seconds of each level of `cfg`'s map (one core per unit), in total and as wall time on `workers` cores.

    Data preparation (seconds) is left out; a base model is its steps and
    one evaluation on the test problems.
    """
    cells = expand(cfg)
    units = {
        "base models": [c.data_params.get("base_steps", 0) * rates.s_per_step
                        + c.data_params["eval_problems"] * rates.s_per_problem for c in _unique(cells, "data_id")],
        "warmstarts": [_train_seconds(c.boot_params.get("warmstart_steps", 40), c.boot_params, c.data_params, rates)
                       for c in _unique(cells, "warm_id")],
        "E-steps 1": [_estep_seconds(c.boot_params, c.data_params, rates) for c in _unique(cells, "estep_id")],
        "cells": [_train_seconds(c.boot_params.get("steps", 40), c.boot_params, c.data_params, rates)
                  + _estep_seconds(c.boot_params, c.data_params, rates) for c in cells],
    }
    levels = {k: {"units": len(v), "core_seconds": sum(v), "wall_seconds": _makespan(v, workers)}
              for k, v in units.items()}
    return {"levels": levels, "core_seconds": sum(v["core_seconds"] for v in levels.values()),
            "wall_seconds": sum(v["wall_seconds"] for v in levels.values()), "workers": workers,
            "rates": dataclasses.asdict(rates)}


# --------------------------------------------------------------------------- the whole map
def load_map(name: str, **overrides) -> LoopMapConfig:
    path = PARAMS_DIR / name / MAP_FILE
    if not path.is_file():
        raise ConfigError(f"map params file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return load(LoopMapConfig, params, where=str(path))


def run_map(cfg: LoopMapConfig):
    """Run every level of the map (finished units are reused), then write its table and figure; returns the table."""
    from lt_utils.runtime.parallel import available_cores, run_parallel
    from lt_utils.runtime.runs import write_json

    root = resolve(cfg.run_root) / cfg.name
    if cfg.overwrite and root.exists():
        shutil.rmtree(root)
    cells = expand(cfg)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "map.json", {"config": to_dict(cfg), "cells": [
        {"name": c.name, "variant": c.variant, "row_value": c.row_value, "col_value": c.col_value,
         "warmstart": f"{c.data_id}/03_warmstart_{c.warm_id}", "estep1": f"{c.data_id}/03_estep1_{c.estep_id}"}
        for c in cells]})
    workers = cfg.workers or available_cores()

    def par(fn, args, desc):
        return run_parallel(_star, [(fn, a) for a in args], workers=workers, desc=desc,
                            names=[f"{fn.__name__}{i}" for i in range(len(args))])

    par(run_data, [(c.data_params,) for c in _unique(cells, "data_id")], "data and base models")
    par(run_warmstart, [(c.boot_params, c.warm_id) for c in _unique(cells, "warm_id")], "warmstarts")
    par(run_estep1, [(c.boot_params, c.warm_id, c.estep_id) for c in _unique(cells, "estep_id")], "E-steps 1")
    metas = [{"variant": c.variant, "row_param": cfg.row_param, "row_value": c.row_value, "col_param": cfg.col_param,
              "col_value": c.col_value, "estep_temperature": c.boot_params.get("estep_temperature", 1.0),
              "mstep_steps": c.boot_params.get("steps"), "cell": c.name, "cell_id": c.cell_id} for c in cells]
    outs = par(run_cell, [(c.boot_params, c.estep_id, m) for c, m in zip(cells, metas)], "cells")
    df = build_table([cell_row(o, o["estep1"], o["estep2"], last_dev_eval(root / o["cell"])) for o in outs])
    write_table(df, root / TABLE)
    draw(df, root / "figures")
    if cfg.figures_dir:
        from lt_utils.report import tables

        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, "the loop-gain map: make loop-map")
    write_json(root / "DONE", {"cells": len(cells), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return df


def _star(item):
    fn, args = item
    return fn(*args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", default="loop_map", help=f"params/<map>/{MAP_FILE} (loop_map, loop_map_smoke)")
    ap.add_argument("--run-root", help="override the map's run_root")
    ap.add_argument("--workers", type=int, help="override the map's workers")
    ap.add_argument("--overwrite", action="store_true", help="redo the map from nothing")
    ap.add_argument("--redraw", action="store_true",
                    help="redraw the figure from its stored table (default figures/data/loop_map.csv), no run")
    ap.add_argument("--table", help="with --redraw: the table to draw from")
    ap.add_argument("--out", help="with --redraw: where the figure goes (default: the table's parent's parent)")
    ap.add_argument("--estimate", metavar="MEASURED_MAP_DIR",
                    help="no run: the cost of --map from the rates measured in a finished tiny map's directory")
    args = ap.parse_args(argv)
    from lt_utils.runtime.runs import MissingInputError

    try:
        if args.redraw:
            table = resolve(args.table) if args.table else FIGURES_DIR / "data" / TABLE
            paths = draw(read_table(table), resolve(args.out) if args.out else table.parent.parent)
            print(f"{FIGURE} from {table} -> {', '.join(str(p) for p in paths)}")
            return 0
        cfg = load_map(args.map, run_root=args.run_root, workers=args.workers, overwrite=args.overwrite or None)
        if args.estimate:
            from lt_utils.runtime.parallel import available_cores

            est = estimate(cfg, measure(resolve(args.estimate)), cfg.workers or available_cores())
            print(json.dumps(est, indent=2))
            return 0
        df = run_map(cfg)
    except (ConfigError, MissingInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(df[["variant", "row_value", "col_value", "warmstart_posterior_correct", "rho", "lift", "gain"]].to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
