"""The raw-prefix gap: which context the posterior reads best, and whether a no-thought coin in training helps.

    python -m lt_utils.sweeps.prefix_layout            # params/prefix_layout/layout.yaml (make prefix-layout)
    python -m lt_utils.sweeps.prefix_layout --redraw   # figures/data/prefix_layout.csv -> figures/prefix_layout.*

Every training document carries a thought at every chunk, so the paper's bootstrap E-step, which shows the
posterior 3 chunks of raw text before x, asks it to read a context it never trained on.  The study cut that
prefix to the one chunk that holds the question (docs/loop_regime.md); two other candidates are
measured here, by fidelity (f, the probability of the oracle thought, `lt_utils.fidelity`) and greedy
posterior correctness on the bootstrap corpus, split by a document's first chunks and later ones:

* **prefixes that carry the thoughts of earlier chunks** (`lt_utils.prefix_layout`, layout ``thoughts``):
  each earlier chunk in the joint's training form ``SoL PRI z EoL x``.  The carried thoughts are the world's
  oracle thoughts, so this is the layout's ceiling: what a prefix would give if every earlier chunk's selected
  thought were right;
* **a per-chunk no-thought coin in training** (`no_thought_p`, beyond the paper): warmstarts in which each
  chunk is laid out without its thought with that probability, so runs of raw chunks occur in training.

Each warmstart (the loop-gain map's warmstart level; a coin of 0 is the fidelity curve's own run) is scored
under every (prefix chunks, layout) pair listed.  Bootstrap-corpus chunks and dev problems only.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from dataclasses import dataclass, field

from lt_utils.runtime.config import require
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve  # noqa: F401 (the dirs: read by sweep_main)
from lt_utils.report import tables
from lt_utils.sweeps import fidelity_curve, loop_map
from lt_utils.sweeps.entry import sweep_main

PARAMS_FILE = "layout.yaml"
TABLE = "prefix_layout.csv"
FIGURE = "prefix_layout"
MAKER = "make prefix-layout"
FAMILIES = ("addition", "linear", "word")
REFERENCE = "raw1"                 # the E-step's own layout, every other one is compared with (paired by chunk)
COLUMNS = ["no_thought_p", "steps", "seed", "prefix_chunks", "prefix_layout", "f", "f_first_chunks",
           "f_later_chunks", "n_first", "n_later", "later_vs_raw1", "later_vs_raw1_lo", "later_vs_raw1_hi",
           "later_vs_raw1_p", "greedy_correct", "greedy_first", "greedy_later", "n_greedy",
           *[f"p_{f}" for f in FAMILIES], "f_dev", "dev_accuracy", "warmstart"]


@dataclass(frozen=True)
class PrefixLayoutConfig:
    map: str = "loop_map_transfer"     # params/<map>/map.yaml: the warmstarts' profile and run root (the curve's)
    budgets: list[int] = field(default_factory=lambda: [1000, 3000])     # warmstart steps
    coins: list[float] = field(default_factory=lambda: [0.0, 0.5])       # no_thought_p of the warmstart's layout
    seeds: list[int] = field(default_factory=lambda: [0])                # warmstart seeds
    layouts: list[str] = field(default_factory=lambda: ["raw1", "raw3", "thoughts1", "thoughts3"])
    decode_chunks: int = 512           # bootstrap chunks decoded greedily per warmstart and layout
    workers: int = 0
    figures_dir: str = "figures"

    def __post_init__(self):
        require(len(self.budgets) > 0 and all(b >= 1 for b in self.budgets), "budgets must list steps ≥ 1")
        require(len(self.coins) > 0 and all(0 <= c < 1 for c in self.coins), "coins must list values in [0, 1)")
        require(len(self.seeds) > 0 and all(s >= 0 for s in self.seeds), "seeds must list seeds ≥ 0")
        bad = [x for x in self.layouts if parse_layout(x) is None]
        require(len(self.layouts) > 0 and not bad,
                f"layouts: {bad[0] if bad else '(none)'!r} is not <raw|thoughts><prefix chunks ≥ 1>, e.g. raw3")
        require(self.decode_chunks >= 0 and self.workers >= 0, "decode_chunks and workers must be ≥ 0")


def parse_layout(name: str) -> tuple[str, int] | None:
    """``raw3`` → ("raw", 3); None for a name that is not a prefix layout and a count ≥ 1."""
    from lt_utils.prefix_layout import PREFIX_LAYOUTS

    for kind in PREFIX_LAYOUTS:
        rest = str(name)[len(kind):]
        if str(name).startswith(kind) and rest.isdigit() and int(rest) >= 1:
            return kind, int(rest)
    return None


def cells(cfg: PrefixLayoutConfig) -> list[tuple[float, loop_map.Cell]]:
    """(coin, cell) for every coin × budget × seed: the map's warmstart level with `no_thought_p` set (a coin of
    0 leaves it at its default, so those cells are the fidelity curve's own)."""
    base = loop_map.load_map(cfg.map)
    out = []
    for coin in cfg.coins:
        extra = {"no_thought_p": float(coin)} if coin else {}
        m = dataclasses.replace(base, bootstrap={**base.bootstrap, **extra}, row_param="warmstart_steps",
                                row_values=list(cfg.budgets), col_param="steps", col_values=base.col_values[:1],
                                ablation={}, ablation_rows=[])
        for c in loop_map.expand(m):
            out += [(float(coin), c if seed == c.boot_params["seeds"][0] else loop_map.with_seed(c, seed))
                    for seed in cfg.seeds]
    return out


def run_layout(params: dict, warm_id: str, estep_id: str, layout: str, decode_chunks: int) -> dict:
    """f and greedy posterior correctness of one warmstart with the bootstrap corpus' prefixes in `layout`."""
    from lt_utils.fidelity import fidelity_report
    from lt_utils.prefix_layout import relayout
    from lt_utils.runtime.runs import read_json, write_json
    from lt_utils.stages import em_estep
    from lt_utils.stages.bootstrap_em import Study
    from lt_utils.teacher import OracleTeacher

    cfg, run = fidelity_curve.open_with_warmstart(params, warm_id, f"03_prefix_{estep_id}_{layout}")
    if run.already_done:
        return read_json(run.file("prefix_fidelity.json"))
    t0 = time.perf_counter()
    study = Study(run, cfg)
    kind, n = parse_layout(layout)
    _, heads, chunks, spans = study._boot
    ecfg = em_estep.iteration_config(cfg, 1)
    thought_of = OracleTeacher(cfg.thought_style).thought_for

    def measure(model, tok, _):
        laid = relayout(heads, chunks, spans, tok, n, layout=kind, thought_of=thought_of)
        return fidelity_report(model, tok, laid, [], em_estep.chunk_is_correct, max_prefix_tokens=ecfg.max_prefix_tokens,
                               ban_special_in_thought=ecfg.ban_special_in_thought, temperature=ecfg.temperature,
                               max_thought_tokens=ecfg.max_thought_tokens, decode_chunks=decode_chunks,
                               seed=ecfg.seed, thought_style=cfg.thought_style, per_chunk=True)["bootstrap"]

    fid = em_estep.with_generator(study.model_dir("warmstart"), study.tok_dir, measure, threads=1)
    out = {"layout": layout, "prefix_layout": kind, "prefix_chunks": n, "fidelity": fid,
           "seconds": time.perf_counter() - t0}
    write_json(run.file("prefix_fidelity.json"), out)
    run.add_artifact("prefix_fidelity.json", "the warmstart's fidelity with the corpus' prefixes in this layout")
    run.finish()
    return out


def row(coin: float, seed: int, steps: int, res: dict, base: dict, warm: str) -> dict:
    """One table row: a warmstart's fidelity in one prefix layout, beside its dev f and accuracy (`base`: its
    `fidelity_curve.run_fidelity` result)."""
    fid, g = res["fidelity"], res["fidelity"].get("greedy", {})
    pos, gpos, fam = fid.get("by_position", {}), g.get("by_position", {}), fid.get("by_family", {})
    return {"no_thought_p": coin, "steps": steps, "seed": seed, "prefix_chunks": res["prefix_chunks"],
            "prefix_layout": res["prefix_layout"], "f": fid.get("f"),
            "f_first_chunks": pos.get("first", {}).get("f"), "f_later_chunks": pos.get("later", {}).get("f"),
            "n_first": pos.get("first", {}).get("n"), "n_later": pos.get("later", {}).get("n"),
            "greedy_correct": g.get("correct"), "greedy_first": gpos.get("first", {}).get("correct"),
            "greedy_later": gpos.get("later", {}).get("correct"), "n_greedy": g.get("n"),
            **{f"p_{f}": fam.get(f, {}).get("p") for f in FAMILIES},
            "f_dev": base["fidelity"].get("dev", {}).get("f"), "dev_accuracy": (base.get("dev") or {}).get("accuracy"),
            "warmstart": warm}


def versus(res: dict, ref: dict) -> dict:
    """q(z*) on a document's later chunks in this layout minus in `ref`'s, for the same warmstart, paired by chunk
    (mean difference, 95% t interval, p)."""
    import math

    from lt_utils.stats import paired_compare

    later = lambda r: {pos: math.exp(lq) for pos, index, lq in r["fidelity"].get("chunks", []) if index > 0}  # noqa: E731
    c = paired_compare(later(res), later(ref), res["layout"], ref["layout"])
    return {"later_vs_raw1": c.diff, "later_vs_raw1_lo": c.ci_low, "later_vs_raw1_hi": c.ci_high,
            "later_vs_raw1_p": c.p_value}


def build_table(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["no_thought_p", "steps", "seed", "prefix_layout", "prefix_chunks"],
                          kind="mergesort").reset_index(drop=True)


def run(cfg: PrefixLayoutConfig):
    """Warmstarts of every coin (reused where the curve or the map has them), their standard fidelity, then
    their fidelity under every prefix layout; writes the table and figure."""
    from lt_utils.runtime.parallel import available_cores, run_parallel

    grid = cells(cfg)
    todo = loop_map._unique([c for _, c in grid], "estep_id")
    coin_of = {c.estep_id: coin for coin, c in grid}
    base = fidelity_curve.measure_warmstarts(todo, cfg.workers, fidelity_curve.DECODE_CHUNKS)
    units = [(c, lay) for c in todo for lay in cfg.layouts]
    outs = run_parallel(loop_map._star, [(run_layout, (c.boot_params, c.warm_id, c.estep_id, lay, cfg.decode_chunks))
                                         for c, lay in units],
                        workers=cfg.workers or available_cores(), desc="prefix layouts",
                        names=[f"{c.estep_id}_{lay}" for c, lay in units])
    by_cell = {c.estep_id: b for c, b in zip(todo, base)}
    ref = {c.estep_id: o for (c, lay), o in zip(units, outs) if lay == REFERENCE}
    rows = [{**row(coin_of[c.estep_id], c.boot_params["seeds"][0], c.row_value, o, by_cell[c.estep_id],
                   f"{c.data_id}/03_warmstart_{c.warm_id}"),
             **(versus(o, ref[c.estep_id]) if c.estep_id in ref else {})} for (c, _), o in zip(units, outs)]
    df = build_table(rows)
    if cfg.figures_dir:
        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, MAKER)
    return df


def seed_comparisons(df, column: str = "f_later_chunks") -> list:
    """Paired by seed (`stats.paired_compare`), per warmstart budget: every layout against raw1 of the same
    warmstarts, and every coin's warmstarts against the coin-0 ones in the same layout."""
    from lt_utils.stats import paired_compare

    def per_seed(d):
        return {int(r.seed): float(getattr(r, column)) for r in d.itertuples()}

    out = []
    df = df.assign(layout=df["prefix_layout"] + df["prefix_chunks"].astype(str))
    for (coin, steps), d in df.groupby(["no_thought_p", "steps"]):
        ref = per_seed(d[d["layout"] == REFERENCE])
        for lay, dl in d[d["layout"] != REFERENCE].groupby("layout"):
            out.append(paired_compare(per_seed(dl), ref, f"{lay}, coin {coin:g}, {steps:,} steps",
                                      f"{REFERENCE}, coin {coin:g}, {steps:,} steps"))
    for (steps, lay), d in df.groupby(["steps", "layout"]):
        ref = per_seed(d[d["no_thought_p"] == 0])
        for coin, dc in d[d["no_thought_p"] != 0].groupby("no_thought_p"):
            out.append(paired_compare(per_seed(dc), ref, f"coin {coin:g}, {lay}, {steps:,} steps",
                                      f"coin 0, {lay}, {steps:,} steps"))
    return out


def report(df) -> None:
    cols = ["no_thought_p", "steps", "seed", "prefix_layout", "prefix_chunks", "f", "f_first_chunks",
            "f_later_chunks", "greedy_first", "greedy_later", "f_dev", "dev_accuracy"]
    print(df[cols].round(3).to_string(index=False))
    print(f"\nq(z*) on later chunks against {REFERENCE} of the same warmstart, paired by chunk (95% t interval):")
    for r in df.itertuples():
        if f"{r.prefix_layout}{r.prefix_chunks}" != REFERENCE and r.later_vs_raw1 == r.later_vs_raw1:
            print(f"  coin {r.no_thought_p:g}, {r.steps:,} steps, seed {r.seed}, {r.prefix_layout}{r.prefix_chunks}: "
                  f"{100 * r.later_vs_raw1:+.1f} pts ({100 * r.later_vs_raw1_lo:+.1f} to {100 * r.later_vs_raw1_hi:+.1f}), "
                  f"n = {r.n_later}, p = {r.later_vs_raw1_p:.2g}")
    if df["seed"].nunique() > 1:
        print("\nf on later chunks, paired by seed (per seed in the table above):")
        for c in seed_comparisons(df):
            print("  " + c.summary(scale=100, unit="pts"))


read_table = functools.partial(tables.read_table, maker=MAKER)   # read_table(path)
draw = functools.partial(tables.draw, figure=FIGURE)              # draw(df, out_dir)


def main(argv: list[str] | None = None) -> int:
    return sweep_main(sys.modules[__name__], PrefixLayoutConfig, argv, default_params="prefix_layout",
                      what="prefix layout", report=report)


if __name__ == "__main__":
    sys.exit(main())
