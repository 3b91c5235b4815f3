"""The loop's cobweb from measured runs: its E- and M-step maps, fixed points, and the loops it should predict.

    python -m lt_utils.sweeps.cobweb_map                 # params/loop_cobweb/cobweb.yaml (make cobweb)
    python -m lt_utils.sweeps.cobweb_map --redraw        # figures/data/loop_cobweb.csv -> figures/loop_cobweb.*

Every E-step summary with loop diagnostics is a measured point of both maps
(`lt_utils.cobweb`): of the E-step map (one sample's correctness s → the
selected thoughts' c) and, from iteration 2 on, of the M-step map (the
correctness c of the thoughts its generator was trained on → s).  The
warmstart's E-step 1 is an E-step point only: its generator was trained on a
different corpus (the teacher's thoughts for the warmstart documents), not by
an M-step.  Points come from full loops (stage 03 runs, several seeds) and
from loop-gain maps (whose cells are warmstart → E-step 1 → M-step → E-step 2),
all at one M-step budget and corpus, which the params file names; the loops'
own c_t are drawn over the map they are predicted by.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lt_utils.runtime.config import require
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve  # noqa: F401 (the dirs: read by sweep_main)
from lt_utils.report import tables
from lt_utils.sweeps.entry import sweep_main

PARAMS_FILE = "cobweb.yaml"
TABLE = "loop_cobweb.csv"
FIGURE = "loop_cobweb"
MAKER = "make cobweb"
COLUMNS = ["kind", "source", "seed", "iteration", "x", "y"]


@dataclass(frozen=True)
class CobwebConfig:
    loops: list[str] = field(default_factory=list)   # stage-03 run directories (runs/<study>/03_bootstrap_em)
    maps: list[str] = field(default_factory=list)    # loop-gain map directories (runs/loop_map/<name>)
    figures_dir: str = "figures"                     # where the figure and data/loop_cobweb.csv go

    def __post_init__(self):
        require(len(self.loops) + len(self.maps) > 0, "loops and maps: name at least one run")


def _loop(s: dict, key: str) -> float | None:
    v = s.get(f"loop_{key}")
    return None if v is None else float(v)


def summary_rows(s: dict, iteration: int, source: str, seed: int) -> list[dict]:
    """The E-step point of one E-step summary, and its M-step point from iteration 2 on."""
    rows = []
    sample, selected, trained = _loop(s, "posterior_sample_correct"), _loop(s, "selected_correct"), \
        _loop(s, "trained_on_correct")
    if sample is not None and selected is not None:
        rows.append({"kind": "E", "source": source, "seed": seed, "iteration": iteration, "x": sample, "y": selected})
    if iteration >= 2 and trained is not None and sample is not None:
        rows.append({"kind": "M", "source": source, "seed": seed, "iteration": iteration, "x": trained, "y": sample})
    return rows


def loop_rows(stage_dir: Path) -> list[dict]:
    """Points and trajectory of one stage-03 run: its seed's E-steps in order."""
    from lt_utils.runtime.runs import read_json

    cfg = yaml.safe_load((stage_dir / "config.yaml").read_text()) or {}
    seed = int((cfg.get("seeds") or [0])[0])
    source = f"{stage_dir.parent.name} seed {seed}"
    rows = []
    for path in sorted(stage_dir.glob("iter*/estep_summary.json"), key=lambda p: int(p.parent.name[4:])):
        it = int(path.parent.name[4:])
        s = read_json(path)
        rows += summary_rows(s, it, source, seed)
        if _loop(s, "selected_correct") is not None:
            rows.append({"kind": "loop", "source": source, "seed": seed, "iteration": it, "x": it,
                         "y": _loop(s, "selected_correct")})
    return rows


def map_rows(map_dir: Path) -> list[dict]:
    """Points of every finished cell of a loop-gain map: E-step 1 (E), E-step 2 (E and M)."""
    from lt_utils.runtime.runs import read_json

    rows = []
    for path in sorted(map_dir.glob("d_*/03_cell_*/cell.json")):
        c = read_json(path)
        source = f"{map_dir.name} {c.get('row_param')}={c.get('row_value')} {c.get('col_param')}={c.get('col_value')}"
        rows += summary_rows(c["estep1"], 1, source, -1) + summary_rows(c["estep2"], 2, source, -1)
    return rows


def build_table(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["kind", "source", "iteration"], kind="mergesort").reset_index(drop=True)


def predictions(df) -> list[dict]:
    """The fitted maps (all points), their fixed points, and each measured loop beside the trajectory predicted
    from its first selected correctness by maps fitted without that loop's points."""
    from lt_utils.cobweb import domain, fit_maps, fixed_points, loop_predictions

    e, m = fit_maps(df["kind"], df["x"], df["y"])
    if e is None or m is None:
        return []
    lo, hi = domain(e, m)
    out = [{"E": f"1 - (1 - s)^{e.gamma:.3f}", "M": f"{m.a:.3f} + {m.b:.3f} c", "domain": (round(lo, 4), round(hi, 4)),
            "fixed_points": [(round(f.c, 4), round(f.slope, 3), f.stable) for f in fixed_points(e, m, lo, hi)]}]
    for source, p in loop_predictions(df["kind"], df["source"], df["x"], df["y"]).items():
        out.append({"source": source, "measured": [round(c, 4) for c in p["measured"]],
                    "predicted": None if p["predicted"] is None else [round(c, 4) for c in p["predicted"]]})
    return out


def run(cfg: CobwebConfig):
    from lt_utils.runtime.runs import MissingInputError

    rows = []
    for d in cfg.loops:
        path = resolve(d)
        if not (path / "config.yaml").is_file():
            raise MissingInputError(f"{path}: no stage-03 run here (make loop-confirm writes them)")
        rows += loop_rows(path)
    for d in cfg.maps:
        path = resolve(d)
        if not path.is_dir():
            raise MissingInputError(f"{path}: no loop-gain map here (make loop-map MAP=... writes it)")
        rows += map_rows(path)
    df = build_table(rows)
    if cfg.figures_dir:
        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, MAKER)
    return df


read_table = functools.partial(tables.read_table, maker=MAKER)   # read_table(path)
draw = functools.partial(tables.draw, figure=FIGURE)              # draw(df, out_dir)


def main(argv: list[str] | None = None) -> int:
    def report(df):
        print(df.to_string())
        for p in predictions(df):
            print(p)

    return sweep_main(sys.modules[__name__], CobwebConfig, argv, default_params="loop_cobweb", what="cobweb",
                      report=report)

if __name__ == "__main__":
    sys.exit(main())
