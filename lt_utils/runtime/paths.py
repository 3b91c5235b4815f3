"""Where things live: every path in the study is derived from the project root.

Notebooks run with their own directory as cwd under papermill, so relative
paths would silently point somewhere else; resolving against PROJECT_ROOT
keeps `runs/` and `figures/` in one place whichever way a stage is started.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = PROJECT_ROOT / "params"
FIGURES_DIR = PROJECT_ROOT / "figures"
RUNS_DIR = PROJECT_ROOT / "runs"


def resolve(path: str | Path) -> Path:
    """Absolute path; relative ones are taken from the project root, not the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
