"""Redraw the study's figures from the tables stage 04 stored beside them.

    python -m lt_utils.report.redraw                       # figures/data -> figures/ (and figures/*/data -> figures/*/)
    python -m lt_utils.report.redraw --data runs/smoke/04_analysis/figures/data

Stage 04 writes every figure's input as small CSV tables into
`<figures dir>/data/` and draws the figures from those files as read back, so
redrawing from the committed tables gives the committed figures byte for byte,
in seconds, without rerunning the study.  The loop-gain map's table
(`loop_map.csv`, written by `make loop-map`), the fidelity curve's
(`fidelity_curve.csv`, `make fidelity`), the cobweb's (`loop_cobweb.csv`,
`make cobweb`), the selection ablation's (`selection_ablation.csv`, `make selection`) and the M-step
transfer curve's (`mstep_transfer.csv`, `make mstep-transfer`), the thought format's (`thought_format.csv`,
`make thought-format`) and the prefix layouts' (`prefix_layout.csv`, `make prefix-layout`) are redrawn too where
they are stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lt_utils.runtime.paths import FIGURES_DIR, resolve
from lt_utils.runtime.runs import MissingInputError


# The command that writes each committed set of figure tables.
MAKERS = {FIGURES_DIR / "data": "make study",
          FIGURES_DIR / "long_budget" / "data": "make study-long",
          FIGURES_DIR / "paper_proportions" / "data": "make study-proportions",
          FIGURES_DIR / "full" / "data": "make study-full",
          FIGURES_DIR / "warmstart_map" / "data": "make loop-map MAP=loop_map_warmstart",
          FIGURES_DIR / "transfer_map" / "data": "make loop-map MAP=loop_map_transfer"}


def draw(data_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, list[Path]]:
    """Render every figure that has data from the tables in `data_dir` into `out_dir` (default: its parent)."""
    from lt_utils.report import plots
    from lt_utils.report import results
    from lt_utils.sweeps import loop_map

    data_dir = resolve(data_dir)
    out_dir = out_dir or data_dir.parent
    loop_table = data_dir / loop_map.TABLE   # the loop-gain map's table, where `make loop-map` stored one
    if not (data_dir / "evals.csv").is_file() and loop_table.is_file():
        produced = {loop_map.FIGURE: loop_map.draw(loop_map.read_table(loop_table), out_dir)}
        produced.update(draw_loop_regime(data_dir, out_dir))
        return produced
    tables = results.read_figure_data(data_dir, MAKERS.get(data_dir, ""))
    produced = plots.render_all(results.figure_frames(None, tables=tables), out_dir)
    if loop_table.is_file():
        produced[loop_map.FIGURE] = loop_map.draw(loop_map.read_table(loop_table), out_dir)
    produced.update(draw_loop_regime(data_dir, out_dir))
    return produced


def draw_loop_regime(data_dir: Path, out_dir: str | Path) -> dict[str, list[Path]]:
    """The fidelity curve, the cobweb, the selection ablation, the M-step transfer curve, the thought format and
    the prefix layouts, where their tables are stored in `data_dir`."""
    from lt_utils.sweeps import cobweb_map, fidelity_curve, mstep_transfer, prefix_layout, selection, thought_format

    out = {}
    for mod in (fidelity_curve, cobweb_map, selection, mstep_transfer, thought_format, prefix_layout):
        if (data_dir / mod.TABLE).is_file():
            out[mod.FIGURE] = mod.draw(mod.read_table(data_dir / mod.TABLE), out_dir)
    return out


def default_data_dirs() -> list[Path]:
    """figures/data first (required), then the data of every figure set beside it (e.g. figures/long_budget)."""
    return [FIGURES_DIR / "data", *sorted(p for p in FIGURES_DIR.glob("*/data") if p.is_dir())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", help="a directory of figure tables (repeatable; default: figures/data "
                                                    "and figures/*/data)")
    ap.add_argument("--out", help="where the figures go (default: the parent of each data directory)")
    args = ap.parse_args(argv)
    data_dirs = [resolve(d) for d in args.data] if args.data else default_data_dirs()
    try:
        for d in data_dirs:
            paths = draw(d, args.out)
            print(f"{len(paths)} figures from {d} -> {resolve(args.out) if args.out else d.parent}")
            if not (d / "evals.csv").is_file() and not MAKERS.get(d, "").startswith("make loop-map"):
                print(f"note: {d / 'evals.csv'} not found: only the loop-gain map was redrawn; the study's own "
                      f"figures need the tables {MAKERS.get(d, 'the analysis stage')} writes", file=sys.stderr)
    except MissingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
