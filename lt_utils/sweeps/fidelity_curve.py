"""The fidelity curve: how much training on oracle thoughts makes a generator's posterior sharp on the right one.

    python -m lt_utils.sweeps.fidelity_curve                   # params/fidelity_curve/curve.yaml (make fidelity)
    python -m lt_utils.sweeps.fidelity_curve --widths 64       # one width only
    python -m lt_utils.sweeps.fidelity_curve --redraw          # figures/data/fidelity_curve.csv -> the figure

The loop can only select right thoughts its generator proposes, and at T = 1
it proposes them about as often as f = mean q(z* | x) (`lt_utils.fidelity`).
This curve trains warmstarts from the shared base model on the warmstart
corpus with oracle thoughts, at training budgets spanning ≥ 10× (each with its
own cosine schedule decayed to the floor at its end) and at several model
widths and depths (each shape its own base model), and measures every one's f, its
greedy and sampled posterior correctness, dev accuracy and thought NLL: what
compute gives f ≥ 0.9, family by family.

The runs are the loop-gain map's warmstart level (`lt_utils.sweeps.loop_map`)
under the map named in the params file, so a warmstart the map trained is
reused here and the other way round; a width is the map's profile with
`n_embd`, `intermediate_size` (4×) and their `base_*` twins overridden, a
depth (`depths`, at the first width) `n_layer` and `base_n_layer` as well.
Dev problems only: a calibration never reads test.
"""

from __future__ import annotations

import argparse
import functools
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lt_utils.runtime.config import ConfigError, load, require
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve
from lt_utils.report import tables
from lt_utils.stages import em_estep
from lt_utils.sweeps import loop_map

PARAMS_FILE = "curve.yaml"         # params/<name>/curve.yaml
DECODE_CHUNKS = 256                # the E-step's own greedy-decoding sample (`Study.fidelity`'s default)
TABLE = "fidelity_curve.csv"
FIGURE = "fidelity_curve"
MAKER = "the fidelity curve: make fidelity"
COLUMNS = ["width", "layers", "steps", "tokens", "f", "f_first_chunks", "f_later_chunks", "f_dev", "greedy_correct",
           "greedy_dev_correct", "sampled_dev_correct", "dev_accuracy", "thought_nll_per_token",
           "p_addition", "p_linear", "p_word", "worst_operation", "worst_operation_nll_share", "warmstart"]


@dataclass(frozen=True)
class FidelityCurveConfig:
    map: str = "loop_map_transfer"       # params/<map>/map.yaml: profile, overrides and run root shared with the map
    budgets: list[int] = field(default_factory=lambda: [300, 1000, 3000])   # warmstart steps
    widths: list[int] = field(default_factory=lambda: [64, 128])            # n_embd (heads kept; MLP 4x)
    budgets_by_width: dict[int, list[int]] = field(default_factory=dict)    # a width's own budgets, if not `budgets`
    depths: list[int] = field(default_factory=list)    # deeper models (n_layer) at the first width, each its own base
    budgets_by_depth: dict[int, list[int]] = field(default_factory=dict)    # a depth's own budgets, if not `budgets`
    decode_chunks: int = DECODE_CHUNKS   # bootstrap chunks decoded greedily per generator
    workers: int = 0                     # parallel worker processes (0: one per core)
    figures_dir: str = "figures"         # where the figure and figures/data/fidelity_curve.csv go ("" = none)

    def __post_init__(self):
        require(len(self.budgets) > 0 and all(b >= 1 for b in self.budgets), "budgets must list steps ≥ 1")
        require(len(self.widths) > 0 and all(w >= 8 and w % 4 == 0 for w in self.widths),
                "widths must list n_embd values ≥ 8 divisible by 4")
        require(self.decode_chunks >= 0 and self.workers >= 0, "decode_chunks and workers must be ≥ 0")
        bad = [w for w, b in self.budgets_by_width.items() if w not in self.widths or not b or min(b) < 1]
        require(not bad, f"budgets_by_width: {bad[0] if bad else ''} is not one of widths, or lists no budget ≥ 1")
        require(all(d >= 1 for d in self.depths), "depths must list n_layer values ≥ 1")
        bad = [d for d, b in self.budgets_by_depth.items() if d not in self.depths or not b or min(b) < 1]
        require(not bad, f"budgets_by_depth: {bad[0] if bad else ''} is not one of depths, or lists no budget ≥ 1")

    def budgets_of(self, width: int) -> list[int]:
        return list(self.budgets_by_width.get(width, self.budgets))


def width_overrides(width: int, layers: int | None = None) -> tuple[dict, dict]:
    """(stage-01, stage-03) overrides that make a model of this width (and depth, if given): the base's and
    every run's."""
    size = {"n_embd": width, "intermediate_size": 4 * width, **({"n_layer": layers} if layers else {})}
    return {f"base_{k}": v for k, v in size.items()}, dict(size)


def _grid(base: loop_map.LoopMapConfig, overrides: tuple[dict, dict], budgets: list[int]) -> list[loop_map.Cell]:
    d_over, b_over = overrides
    m = dataclasses.replace(base, data_prep={**base.data_prep, **d_over}, bootstrap={**base.bootstrap, **b_over},
                            row_param="warmstart_steps", row_values=list(budgets),
                            col_param="steps", col_values=base.col_values[:1], ablation={}, ablation_rows=[])
    return loop_map.expand(m)


def cells(cfg: FidelityCurveConfig) -> list[tuple[int, loop_map.Cell]]:
    """(width, cell) for every width × budget, each cell's warmstart level named as the map would name it."""
    base = loop_map.load_map(cfg.map)
    return [(w, c) for w in cfg.widths for c in _grid(base, width_overrides(w), cfg.budgets_of(w))]


def depth_cells(cfg: FidelityCurveConfig) -> list[tuple[int, loop_map.Cell]]:
    """(n_layer, cell) for every extra depth × budget, at the first width."""
    base = loop_map.load_map(cfg.map)
    w = cfg.widths[0]
    return [(d, c) for d in cfg.depths
            for c in _grid(base, width_overrides(w, d), cfg.budgets_by_depth.get(d, cfg.budgets))]


def open_with_warmstart(params: dict, warm_id: str, stage: str):
    """(config, run) of a measurement at a warmstart's level: its own run directory `stage`, the warmstart's
    model linked in unless the run is already done."""
    cfg, run = loop_map._open(loop_map._level_params(params, loop_map.MSTEP_ONLY), stage)
    if not run.already_done:
        seed = cfg.seeds[0]
        loop_map._link(run.path.parent / f"03_warmstart_{warm_id}" / f"train/warmstart/seed{seed}",
                       run.file(f"train/warmstart/seed{seed}"))
    return cfg, run


def run_fidelity(params: dict, warm_id: str, estep_id: str, decode_chunks: int) -> dict:
    """Fidelity of one warmstart in one E-step layout (its own run directory, the model linked in),
    with the warmstart's last dev evaluation."""
    from lt_utils.runtime.runs import read_json, write_json
    from lt_utils.stages.bootstrap_em import Study

    cfg, run = open_with_warmstart(params, warm_id, f"03_fidelity_{estep_id}")
    if run.already_done:
        return read_json(run.file("fidelity.json"))
    t0 = time.perf_counter()
    study = Study(run, cfg)
    gen = study.model_dir("warmstart")
    # E-step 1's own settings, so a warmstart whose E-step 1 the map already ran has this very report in its summary
    estep1 = run.path.parent / f"03_estep1_{estep_id}" / "iter1" / "estep_summary.json"
    fid = read_json(estep1).get("fidelity") if estep1.is_file() and decode_chunks == DECODE_CHUNKS else None
    source = "E-step 1 of the loop-gain map" if fid else "computed here"
    if fid is None:
        ecfg = em_estep.iteration_config(cfg, 1)
        fid = em_estep.fidelity(study, gen, ecfg, decode_chunks=decode_chunks)
    out = {"fidelity": fid, "source": source, "dev": last_dev_eval(gen.parent), "steps": cfg.warmstart_steps,
           "tokens": cfg.warmstart_steps * cfg.batch_size * cfg.seq_len, "seconds": time.perf_counter() - t0}
    write_json(run.file("fidelity.json"), out)
    run.add_artifact("fidelity.json", "the warmstart's fidelity on the bootstrap corpus and dev problems")
    run.finish()
    return out


def last_dev_eval(model_dir: Path) -> dict | None:
    from lt_utils.runtime.runs import read_jsonl

    path = Path(model_dir) / "metrics.jsonl"
    evals = [r for r in read_jsonl(path) if r.get("kind") == "eval" and r.get("split") == "dev"] if path.exists() else []
    return max(evals, key=lambda r: r["step"]) if evals else None


def row(width: int, res: dict, warm: str, layers: int | None = None) -> dict:
    """One row of the table from a warmstart's `fidelity.json` (`layers`: the model's n_layer)."""
    fid = res["fidelity"]
    b, d = fid.get("bootstrap", {}), fid.get("dev", {})
    fam = b.get("by_family", {})
    ops = b.get("by_operation", {})
    worst = max(ops, key=lambda k: ops[k]["nll_share"]) if ops else ""
    return {"width": width, "layers": layers, "steps": res["steps"], "tokens": res["tokens"], "f": b.get("f"),
            "f_first_chunks": b.get("by_position", {}).get("first", {}).get("f"),
            "f_later_chunks": b.get("by_position", {}).get("later", {}).get("f"), "f_dev": d.get("f"),
            "greedy_correct": b.get("greedy", {}).get("correct"), "greedy_dev_correct": d.get("greedy", {}).get("correct"),
            "sampled_dev_correct": d.get("sampled", {}).get("correct"),
            "dev_accuracy": (res.get("dev") or {}).get("accuracy"), "thought_nll_per_token": b.get("nll_per_token"),
            **{f"p_{f}": fam.get(f, {}).get("p") for f in ("addition", "linear", "word")},
            "worst_operation": worst, "worst_operation_nll_share": ops[worst]["nll_share"] if worst else None,
            "warmstart": warm}


def build_table(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["width", "layers", "steps"],
                                                            kind="mergesort").reset_index(drop=True)


def measure_warmstarts(todo: list, workers: int, decode_chunks: int) -> list[dict]:
    """Data groups, warmstarts and the fidelity of each of the cells `todo` (one per E-step id), each unit run
    once and reused where it is already done; returns each cell's `fidelity.json`."""
    from lt_utils.runtime.parallel import available_cores, run_parallel

    workers = workers or available_cores()

    def par(fn, args, desc):
        return run_parallel(loop_map._star, [(fn, a) for a in args], workers=workers, desc=desc,
                            names=[f"{fn.__name__}{i}" for i in range(len(args))])

    par(loop_map.run_data, [(c.data_params,) for c in loop_map._unique(todo, "data_id")], "data and base models")
    par(loop_map.run_warmstart, [(c.boot_params, c.warm_id) for c in loop_map._unique(todo, "warm_id")], "warmstarts")
    return par(run_fidelity, [(c.boot_params, c.warm_id, c.estep_id, decode_chunks) for c in todo], "fidelity")


def run_curve(cfg: FidelityCurveConfig):
    """Base models, warmstarts (reused where the map has them) and their fidelity; writes the table and figure."""
    grid = [((w, loop_map._level_params(c.boot_params, frozenset())["n_layer"]), c) for w, c in cells(cfg)]
    grid += [((cfg.widths[0], d), c) for d, c in depth_cells(cfg)]
    todo = loop_map._unique([c for _, c in grid], "estep_id")
    shape_of = {c.warm_id: shape for shape, c in grid}
    outs = measure_warmstarts(todo, cfg.workers, cfg.decode_chunks)
    rows = []
    for c, o in zip(todo, outs):
        width, layers = shape_of[c.warm_id]
        rows.append(row(width, o, f"{c.data_id}/03_warmstart_{c.warm_id}", layers=layers))
    df = build_table(rows)
    m = loop_map.load_map(cfg.map)
    root = resolve(m.run_root) / m.name
    loop_map.write_table(df, root / TABLE)
    if cfg.figures_dir:
        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, MAKER)
    return df


read_table = functools.partial(tables.read_table, maker=MAKER)   # read_table(path)
draw = functools.partial(tables.draw, figure=FIGURE)              # draw(df, out_dir)


def load_curve(name: str = "fidelity_curve", **overrides) -> FidelityCurveConfig:
    path = PARAMS_DIR / name / PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"fidelity-curve params file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("widths") or overrides.get("budgets"):   # a command-line grid replaces the file's per-width one
        params["budgets_by_width"] = {w: b for w, b in (params.get("budgets_by_width") or {}).items()
                                      if w in params["widths"] and not overrides.get("budgets")}
    return load(FidelityCurveConfig, params, where=str(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="fidelity_curve", help=f"params/<name>/{PARAMS_FILE}")
    ap.add_argument("--widths", type=int, nargs="+", help="override the widths")
    ap.add_argument("--budgets", type=int, nargs="+", help="override the budgets (warmstart steps)")
    ap.add_argument("--workers", type=int, help="override workers")
    ap.add_argument("--redraw", action="store_true", help="redraw the figure from figures/data/fidelity_curve.csv")
    args = ap.parse_args(argv)
    from lt_utils.runtime.runs import MissingInputError

    try:
        if args.redraw:
            table = FIGURES_DIR / "data" / TABLE
            paths = draw(read_table(table), FIGURES_DIR)
            print(f"{FIGURE} from {table} -> {', '.join(str(p) for p in paths)}")
            return 0
        cfg = load_curve(args.params, widths=args.widths, budgets=args.budgets, workers=args.workers)
        df = run_curve(cfg)
    except (ConfigError, MissingInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(df[["width", "steps", "f", "f_dev", "greedy_correct", "sampled_dev_correct", "dev_accuracy"]].to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
