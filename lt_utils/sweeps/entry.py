"""The command line every table-and-figure sweep shares: run it from its params file, or redraw its figure.

    python -m lt_utils.sweeps.<name> [--params NAME]   # params/NAME/<its params file> -> its table and figure
    python -m lt_utils.sweeps.<name> --redraw          # figures/data/<its table> -> figures/<its figure>.*

A sweep module provides PARAMS_FILE, TABLE, PARAMS_DIR, FIGURES_DIR, `run(cfg)`, `read_table(path)` and
`draw(df, out_dir)`; a bad params file or a missing input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any, Callable

import yaml

from lt_utils.runtime.config import ConfigError, load


def sweep_main(module: ModuleType, config_cls: type, argv: list[str] | None, *, default_params: str, what: str,
               report: Callable[[Any], None]) -> int:
    from lt_utils.runtime.runs import MissingInputError

    ap = argparse.ArgumentParser(description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=default_params, help=f"params/<name>/{module.PARAMS_FILE}")
    ap.add_argument("--redraw", action="store_true", help=f"redraw the figure from figures/data/{module.TABLE}")
    args = ap.parse_args(argv)
    try:
        if args.redraw:
            df = module.read_table(module.FIGURES_DIR / "data" / module.TABLE)
            module.draw(df, module.FIGURES_DIR)
        else:
            path = module.PARAMS_DIR / args.params / module.PARAMS_FILE
            if not path.is_file():
                raise ConfigError(f"{what} params file not found: {path}")
            df = module.run(load(config_cls, yaml.safe_load(path.read_text()) or {}, where=str(path)))
    except (ConfigError, MissingInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(df)
    return 0
