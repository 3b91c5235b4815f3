"""The thought format as a lever: sums and differences written in one step, or spelled out column by column.

    python -m lt_utils.sweeps.thought_format            # params/thought_format/format.yaml (make thought-format)
    python -m lt_utils.sweeps.thought_format --redraw   # figures/data/thought_format.csv -> figures/thought_format.*

Fidelity's breakdown by operation (`lt_utils.fidelity`) finds most of a competent generator's lost posterior mass
in one-token arithmetic: the linear family's ``64-19=45``, a two-digit result written in one step, where the
addition family spells out every column.  The paper's thoughts are "step-by-step derivations"; this sweep asks
whether thoughts that spell those steps out (`world.THOUGHT_STYLES`: ``spelled``) are easier to learn to infer,
with the raw text unchanged.  Two measurements, each style against the compact default:

* **fidelity** (dev evidence): warmstarts from the base model on oracle thoughts of each style, at the fidelity
  curve's budgets (the loop-gain map's warmstart level, so the compact ones are the curve's own runs), each
  scored by f on the bootstrap corpus and dev problems, by family, with sampled and greedy posterior correctness
  and dev accuracy;
* **the C1 gap** (the paper's premise that thoughts decompress): the latent-thoughts arm of stage 02 trained on
  each style beside the raw-repeat arm, read from finished stage-02 runs (raw repeat does not depend on the
  style, so both styles are compared with the same raw runs).

The table has one row per (part, style, budget or arm, seed); the figure draws f by family, the posterior's
correctness and the C1 gap.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lt_utils.runtime.config import require
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve  # noqa: F401 (the dirs: read by sweep_main)
from lt_utils.report import tables
from lt_utils.sweeps import fidelity_curve, loop_map
from lt_utils.sweeps.entry import sweep_main

PARAMS_FILE = "format.yaml"
TABLE = "thought_format.csv"
FIGURE = "thought_format"
MAKER = "make thought-format"
FAMILIES = ("addition", "linear", "word")
COLUMNS = ["part", "style", "steps", "arm", "seed", "f", "f_dev",
           *[f"p_{f}" for f in FAMILIES], *[f"p_dev_{f}" for f in FAMILIES],
           "sampled_dev_correct", "greedy_dev_correct", "greedy_correct", "thought_nll_per_token",
           "dev_accuracy", "test_accuracy", "source"]


@dataclass(frozen=True)
class ThoughtFormatConfig:
    map: str = "loop_map_transfer"    # params/<map>/map.yaml: the warmstarts' profile and run root (the fidelity curve's)
    budgets: list[int] = field(default_factory=lambda: [1000, 3000])          # warmstart steps
    styles: list[str] = field(default_factory=lambda: ["compact", "spelled"])
    seeds_at: dict[int, list[int]] = field(default_factory=dict)   # budget -> warmstart seeds there (default [0])
    seeds_styles: list[str] = field(default_factory=list)          # the styles seeds_at applies to ([]: all)
    c1_runs: dict[str, str] = field(default_factory=dict)   # style -> a finished stage-02 run (its latent arm)
    c1_raw_run: str = "runs/cpu/02_synthetic_thoughts"      # the raw-repeat arm every style is compared with
    decode_chunks: int = fidelity_curve.DECODE_CHUNKS
    workers: int = 0
    figures_dir: str = "figures"

    def __post_init__(self):
        from lt_utils.world import THOUGHT_STYLES

        require(len(self.budgets) > 0 and all(b >= 1 for b in self.budgets), "budgets must list steps ≥ 1")
        bad = [s for s in [*self.styles, *self.c1_runs] if s not in THOUGHT_STYLES]
        require(not bad, f"styles / c1_runs: unknown thought style {bad[0] if bad else ''!r} "
                         f"(known: {', '.join(THOUGHT_STYLES)})")
        require(self.decode_chunks >= 0 and self.workers >= 0, "decode_chunks and workers must be ≥ 0")
        bad = [b for b, seeds in self.seeds_at.items() if b not in self.budgets or not seeds or min(seeds) < 0]
        require(not bad, f"seeds_at: {bad[0] if bad else ''} is not one of budgets, or lists no seed ≥ 0")
        bad = [s for s in self.seeds_styles if s not in self.styles]
        require(not bad, f"seeds_styles: {bad[0] if bad else ''!r} is not one of styles")

    def seeds_of(self, style: str, budget: int) -> list[int]:
        if self.seeds_styles and style not in self.seeds_styles:
            return [0]
        return list(self.seeds_at.get(budget, [0]))


def cells(cfg: ThoughtFormatConfig) -> list[tuple[str, loop_map.Cell]]:
    """(style, cell) for every style × budget × seed: the map's warmstart level with `thought_style` (and, past
    seed 0, `seeds`) set.

    The compact style is the default, so its seed-0 cells are the fidelity curve's own (same ids, reused)."""
    base = loop_map.load_map(cfg.map)
    out = []
    for style in cfg.styles:
        m = dataclasses.replace(base, bootstrap={**base.bootstrap, "thought_style": style},
                                row_param="warmstart_steps", row_values=list(cfg.budgets),
                                col_param="steps", col_values=base.col_values[:1], ablation={}, ablation_rows=[])
        for c in loop_map.expand(m):
            out += [(style, c if seed == c.boot_params["seeds"][0] else loop_map.with_seed(c, seed))
                    for seed in cfg.seeds_of(style, c.row_value)]
    return out


def fidelity_row(style: str, seed: int, res: dict, warm: str) -> dict:
    """One `part = fidelity` row from a warmstart's `fidelity.json` (`fidelity_curve.run_fidelity`)."""
    r = fidelity_curve.row(0, res, warm)
    dev_fam = res["fidelity"].get("dev", {}).get("by_family", {})
    keep = ["steps", "f", "f_dev", *[f"p_{f}" for f in FAMILIES], "sampled_dev_correct", "greedy_dev_correct",
            "greedy_correct", "thought_nll_per_token", "dev_accuracy"]
    return {"part": "fidelity", "style": style, "seed": seed, **{k: r[k] for k in keep},
            **{f"p_dev_{f}": dev_fam.get(f, {}).get("p") for f in FAMILIES}, "source": warm}


def c1_rows(style: str, stage_dir: Path, arm: str) -> list[dict]:
    """`part = c1` rows: one arm of a finished stage-02 run, one row per seed (test accuracy, last dev accuracy)."""
    from lt_utils.runtime.runs import read_json, require_done

    path = require_done(resolve(stage_dir), "stage-02 run")
    final = [r for r in read_json(path / "final_metrics.json") if r.get("arm") == arm]
    require(len(final) > 0, f"{path}: no {arm} arm in final_metrics.json")
    rows = []
    for r in sorted(final, key=lambda r: r["seed"]):
        dev = fidelity_curve.last_dev_eval(path / "train" / arm / f"seed{r['seed']}")
        rows.append({"part": "c1", "style": style, "arm": arm, "seed": int(r["seed"]), "steps": int(r["step"]),
                     "dev_accuracy": (dev or {}).get("accuracy"), "test_accuracy": r["accuracy"],
                     "source": str(stage_dir)})   # as the params name it: no machine's absolute path in the table
    return rows


def build_table(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["part", "style", "arm", "steps", "seed"], kind="mergesort",
                          na_position="first").reset_index(drop=True)


def run(cfg: ThoughtFormatConfig):
    """Warmstarts of every style (reused where the map or the fidelity curve has them), their fidelity, and the
    C1 rows of the finished stage-02 runs; writes the table and figure."""
    from lt_utils.runtime.runs import require_done

    for stage_dir in ([cfg.c1_raw_run, *cfg.c1_runs.values()] if cfg.c1_runs else []):   # before any training
        require_done(stage_dir, "stage-02 run (c1_runs)")
    grid = cells(cfg)
    todo = loop_map._unique([c for _, c in grid], "estep_id")
    style_of = {c.estep_id: s for s, c in grid}
    outs = fidelity_curve.measure_warmstarts(todo, cfg.workers, cfg.decode_chunks)
    rows = [fidelity_row(style_of[c.estep_id], c.boot_params["seeds"][0], o, f"{c.data_id}/03_warmstart_{c.warm_id}")
            for c, o in zip(todo, outs)]
    if cfg.c1_runs:
        rows += c1_rows("compact", Path(cfg.c1_raw_run), "raw_repeat")
        for style, stage_dir in cfg.c1_runs.items():
            rows += c1_rows(style, Path(stage_dir), "latent_thoughts")
    df = build_table(rows)
    if cfg.figures_dir:
        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, MAKER)
    return df


def c1_comparisons(df) -> list:
    """Welch comparisons, on test and on dev accuracy in points: each style's latent arm − raw repeat (the C1
    gap), and each other style's latent arm − the compact one (`stats.Comparison`s, labels say which)."""
    from lt_utils.stats import welch_compare

    c1 = df[df["part"] == "c1"]
    raw = c1[c1["arm"] == "raw_repeat"]
    latent = {s: d for s, d in c1[c1["arm"] == "latent_thoughts"].groupby("style")}
    out = []
    for split in ("test", "dev"):
        col = f"{split}_accuracy"
        for style, d in sorted(latent.items()):
            out.append(welch_compare(100 * d[col], 100 * raw[col], f"latent {style} ({split})", f"raw_repeat ({split})"))
        for style in sorted(set(latent) - {"compact"}) if "compact" in latent else []:
            out.append(welch_compare(100 * latent[style][col], 100 * latent["compact"][col],
                                     f"latent {style} ({split})", f"latent compact ({split})"))
    return out


def report(df) -> None:
    fid = df[df["part"] == "fidelity"]
    print(fid[["style", "steps", "seed", "f", "f_dev", *[f"p_{f}" for f in FAMILIES], "sampled_dev_correct",
               "dev_accuracy"]].round(3).to_string(index=False))
    if (df["part"] == "c1").any():
        c1 = df[df["part"] == "c1"]
        print(c1[["style", "arm", "seed", "dev_accuracy", "test_accuracy"]].to_string(index=False))
        for comp in c1_comparisons(df):
            print(comp.summary(unit="pts"))


read_table = functools.partial(tables.read_table, maker=MAKER)   # read_table(path)
draw = functools.partial(tables.draw, figure=FIGURE)              # draw(df, out_dir)


def main(argv: list[str] | None = None) -> int:
    return sweep_main(sys.modules[__name__], ThoughtFormatConfig, argv, default_params="thought_format",
                      what="thought format", report=report)


if __name__ == "__main__":
    sys.exit(main())
