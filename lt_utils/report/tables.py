"""Figure tables on disk: one CSV per figure, written byte-stable, read back with a one-line error naming its maker.

A figure is always drawn from its table *as read back from disk*, so redrawing
from a committed table gives the committed figure byte for byte.
"""

from __future__ import annotations

from pathlib import Path


def write_table(df, path: str | Path) -> Path:
    from lt_utils.runtime.runs import write_text

    return write_text(path, df.to_csv(index=False, lineterminator="\n"))


def read_table(path: str | Path, maker: str):
    """The table at `path`; a missing one is a one-line error saying which command writes it."""
    import pandas as pd

    from lt_utils.runtime.runs import MissingInputError

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found (written by {maker})")
    return pd.read_csv(path)


def draw(df, out_dir: str | Path, figure: str) -> list[Path]:
    from lt_utils.report import plots

    return plots.render_all({figure: df}, out_dir)[figure]


def publish(df, fig_dir: str | Path, table: str, figure: str, maker: str) -> list[Path]:
    """Write `df` as `<fig_dir>/data/<table>` and draw `figure` from it as read back into `fig_dir`."""
    fig_dir = Path(fig_dir)
    write_table(df, fig_dir / "data" / table)
    return draw(read_table(fig_dir / "data" / table, maker), fig_dir, figure)
