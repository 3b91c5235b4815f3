"""Fidelity: how much posterior mass the generator puts on the right thought, measured without sampling.

The loop's E-step can only select a right thought if the generator proposes
one, and at T = 1 the share of samples that verify tracks

    f = mean over chunks of q(z* | x, prefix),

the probability of the world's oracle thought z* in the posterior layout
``BOS prefix SoL EoL x SoL POST`` → ``z* EoL``, under exactly the proposal the
E-step samples from (the same temperature, the same banned-token
renormalisation).  One teacher-forced pass gives it exactly, per chunk, and
its per-token log-probs say *where* the mass is lost: each token of z* belongs
to one step of one problem's derivation (``19-4=15.``, ``15/3=5.``,
``so 5.``), so the loss splits by family and by operation.  A step's
probability here is conditional on the oracle's earlier steps (teacher
forcing), which is what makes the split exact: log q(z*) is the sum of its
steps' log-probs.

Beside f, `fidelity_report` measures what sampling would see: the greedy
posterior's correctness (the mode of q) on a spread of chunks, and on dev
problems one T = 1 sample per problem as well.  Dev problems become chunks the
way a document's first chunk looks (prefix: ``Problem: Q Answer:``, chunk:
`` A.``), so dev fidelity is free of the training corpus.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from lt_utils.data import Chunk
from lt_utils.estep import posterior_prompt, thought_banned_ids
from lt_utils.teacher import OracleTeacher, chunk_units
from lt_utils.tokens import SpecialIds, encode

# One clause of a thought: everything up to and including its closing period.
_CLAUSE = re.compile(r"[^.]*\.")
_ANSWER = re.compile(r"^\s*so -?\d+\.$")
_EXPR = re.compile(r"(?:\d+: )?(?P<expr>\d+(?:[-+*/]\d+)+)=")


@dataclass(frozen=True)
class Step:
    """One clause of a chunk's oracle thought: its problem (unit), family, operation and character span."""

    unit: int
    family: str
    op: str          # operators of the clause's expression in order of first use ("+", "-", "/", "*+"), "answer" or "fact"
    start: int
    end: int


def clause_op(clause: str) -> str:
    """The operation a clause performs: 'answer' (``so N.``), the operators of its expression, or 'fact'."""
    if _ANSWER.match(clause):
        return "answer"
    m = _EXPR.search(clause)
    if not m:
        return "fact"
    return "".join(dict.fromkeys(ch for ch in m.group("expr") if ch in "+-*/"))


def thought_steps(thought: str, families: Sequence[str]) -> list[Step]:
    """Cut a chunk's thought into clauses, each labelled with its unit (a unit ends at ``so N.``) and operation.

    Text after the last clause (none in an oracle thought) is ignored.
    """
    steps, unit = [], 0
    for m in _CLAUSE.finditer(thought):
        op = clause_op(m.group())
        family = families[min(unit, len(families) - 1)] if families else "?"
        steps.append(Step(unit, family, op, m.start(), m.end()))
        if op == "answer":
            unit += 1
    return steps


@torch.no_grad()
def thought_logprobs(model, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                     banned_ids: Sequence[int] = (), temperature: float = 1.0, pad_id: int = 0,
                     batch_size: int = 64) -> list[list[float]]:
    """Per-token log-probs of each target after its prompt, under softmax(logits / T) with `banned_ids` removed.

    This is the density the E-step's proposal samples from, teacher-forced.
    Rows are right-padded: causal attention keeps padding out of every real
    token's view, so no position bookkeeping is needed.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
    banned = torch.tensor(sorted(set(banned_ids)), dtype=torch.long, device=device) if banned_ids else None
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        width = max(len(prompts[i]) + len(targets[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            seq = list(prompts[i]) + list(targets[i])
            ids[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        if banned is not None:
            logits[:, :, banned] = float("-inf")
        logp = torch.log_softmax(logits / temperature, dim=-1)
        for r, i in enumerate(rows):
            a, n = len(prompts[i]), len(targets[i])
            tgt = torch.tensor(list(targets[i]), dtype=torch.long, device=device)
            out[i] = logp[r, a - 1:a - 1 + n].gather(-1, tgt[:, None]).squeeze(-1).tolist()
    model.train(was_training)
    return out


def dev_chunks(problems: Sequence[Mapping]) -> list[Chunk]:
    """Dev problems as first chunks of one-problem documents: prefix ``Problem: Q Answer:``, chunk `` A.``."""
    from lt_utils import world

    return [Chunk(doc_id=f"dev:{p.get('uid', i)}", index=0, prefix=world.eval_prompt(p["question"]),
                  suffix=world.eval_target(p["answer"]) + "\n") for i, p in enumerate(problems)]


def score_oracle(model, tokenizer, chunks: Sequence[Chunk], *, max_prefix_tokens: int = 0,
                 ban_special_in_thought: bool = True, temperature: float = 1.0, batch_size: int = 64,
                 thought_style: str = "compact") -> list[dict]:
    """Per chunk: log q(z* EoL | x, prefix) and its split over the oracle thought's steps.

    Chunks without a problem (no oracle thought) are skipped.  Each row holds
    position, doc_id, index, families, n_tokens, log_q (EoL included), and
    steps [{unit, family, op, log_q, n_tokens}] (the EoL counts in the last
    step).
    """
    ids = SpecialIds.of(tokenizer)
    teacher = OracleTeacher(thought_style)
    banned = thought_banned_ids(tokenizer, ids) if ban_special_in_thought else []
    rows, prompts, targets, spans = [], [], [], []
    for pos, c in enumerate(chunks):
        units = chunk_units(c)
        if not units:
            continue
        thought = teacher.thought_for(c)
        enc = tokenizer(thought, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != encode(tokenizer, thought):
            raise ValueError(f"offsets disagree with the tokenizer's encoding of {thought!r}")
        steps = thought_steps(thought, [u.family for u in units])
        owner = [_step_of(end, steps) for _, end in enc["offset_mapping"]]
        prompts.append(posterior_prompt(tokenizer, c, max_prefix_tokens=max_prefix_tokens))
        targets.append([*enc["input_ids"], ids.eol])
        spans.append((steps, owner + [len(steps) - 1]))
        rows.append({"position": pos, "doc_id": c.doc_id, "index": c.index, "families": [u.family for u in units]})
    lps = thought_logprobs(model, prompts, targets, banned_ids=banned, temperature=temperature, pad_id=ids.pad,
                           batch_size=batch_size)
    for row, lp, (steps, owner) in zip(rows, lps, spans):
        per = [{"unit": s.unit, "family": s.family, "op": s.op, "log_q": 0.0, "n_tokens": 0} for s in steps]
        for j, v in zip(owner, lp):
            per[j]["log_q"] += float(v)
            per[j]["n_tokens"] += 1
        row.update(n_tokens=len(lp), log_q=float(sum(lp)), steps=per)
    return rows


def _step_of(char_end: int, steps: Sequence[Step]) -> int:
    """The step holding a token that ends at `char_end` (a separating space goes with the clause after it)."""
    for j, s in enumerate(steps):
        if char_end <= s.end:
            return j
    return len(steps) - 1


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def summarize_fidelity(rows: Sequence[Mapping]) -> dict:
    """f and its breakdowns from `score_oracle` rows.

    * ``f``: mean over chunks of q(z* | x); ``nll_per_token``: mean −log q per thought token;
    * ``by_position``: f over a document's first chunks (empty or head-only prefix) and over later ones;
    * ``by_family``: per problem, the probability of its own steps given the earlier ones (mean);
    * ``by_operation`` (key ``family op``): per step, its conditional probability (mean), and its share of
      the total thought NLL (where the mass is lost).
    """
    if not rows:
        return {"n_chunks": 0, "f": None}
    p = np.exp([r["log_q"] for r in rows])
    total_nll = -sum(s["log_q"] for r in rows for s in r["steps"])
    units: dict[str, list[float]] = {}
    ops: dict[str, list[float]] = {}
    for r in rows:
        by_unit: dict[int, tuple[str, float]] = {}
        for s in r["steps"]:
            fam, lq = by_unit.get(s["unit"], (s["family"], 0.0))
            by_unit[s["unit"]] = (fam, lq + s["log_q"])
            ops.setdefault(f"{s['family']} {s['op']}", []).append(s["log_q"])
        for fam, lq in by_unit.values():
            units.setdefault(fam, []).append(lq)
    first = [math.exp(r["log_q"]) for r in rows if r["index"] == 0]
    later = [math.exp(r["log_q"]) for r in rows if r["index"] > 0]
    return {
        "n_chunks": len(rows),
        "f": float(p.mean()),
        "nll_per_token": -sum(r["log_q"] for r in rows) / max(1, sum(r["n_tokens"] for r in rows)),
        "by_position": {"first": {"n": len(first), "f": _mean(first)}, "later": {"n": len(later), "f": _mean(later)}},
        "by_family": {fam: {"n": len(v), "p": float(np.mean(np.exp(v)))} for fam, v in sorted(units.items())},
        "by_operation": {op: {"n": len(v), "p_step": float(np.mean(np.exp(v))),
                              "nll_share": (-float(np.sum(v)) / total_nll) if total_nll > 0 else 0.0}
                         for op, v in sorted(ops.items())},
    }


def _decoded_correct(model, tokenizer, chunks: Sequence[Chunk], check: Callable[[Chunk, str], bool], *,
                     greedy: bool, seed: int, max_thought_tokens: int, max_prefix_tokens: int, ban: bool,
                     temperature: float, batch_size: int) -> dict:
    """One posterior thought per chunk (greedy or sampled), verified: overall and per family of its first problem."""
    from lt_utils.sample import sample

    ids = SpecialIds.of(tokenizer)
    prompts = [posterior_prompt(tokenizer, c, max_prefix_tokens=max_prefix_tokens) for c in chunks]
    outs = sample(model, prompts, max_new_tokens=max_thought_tokens, stop_ids=[ids.eol], greedy=greedy,
                  temperature=temperature, banned_ids=thought_banned_ids(tokenizer, ids) if ban else [],
                  pad_id=ids.pad, seed=seed, batch_size=batch_size)
    verdicts: dict[str, list[bool]] = {}
    where: dict[str, list[bool]] = {"first": [], "later": []}
    ok = []
    for c, s in zip(chunks, outs):
        toks = s.tokens[:-1] if s.finished else s.tokens
        text = tokenizer.decode(toks, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        v = bool(s.finished) and bool(check(c, text))
        ok.append(v)
        fam = (chunk_units(c) or [None])[0]
        verdicts.setdefault(fam.family if fam else "?", []).append(v)
        where["first" if c.index == 0 else "later"].append(v)
    return {"n": len(ok), "correct": _mean(ok),
            "by_family": {f: {"n": len(v), "correct": float(np.mean(v))} for f, v in sorted(verdicts.items())},
            "by_position": {k: {"n": len(v), "correct": _mean(v)} for k, v in where.items()}}


def spread(n: int, m: int) -> list[int]:
    """`m` positions spread evenly over range(n) (all of them when m ≥ n)."""
    if m >= n:
        return list(range(n))
    return sorted({int(x) for x in np.linspace(0, n - 1, m)})


def fidelity_report(model, tokenizer, corpus_chunks: Sequence[Chunk], dev: Sequence[Chunk],
                    check: Callable[[Chunk, str], bool], *, max_prefix_tokens: int = 0,
                    ban_special_in_thought: bool = True, temperature: float = 1.0, max_thought_tokens: int = 64,
                    decode_chunks: int = 256, seed: int = 0, batch_size: int = 64,
                    thought_style: str = "compact", per_chunk: bool = False) -> dict:
    """f on the bootstrap corpus and on dev problems, with greedy (both) and T-sampled (dev) correctness beside it.

    `check(chunk, thought)` is the world's verifier for a chunk's thought.
    Greedy decoding on the corpus runs on `decode_chunks` chunks spread over it.
    `per_chunk` adds the corpus' ``chunks``: [position, index, log q] per chunk scored (for paired comparisons).
    """
    kw = dict(max_prefix_tokens=max_prefix_tokens, ban_special_in_thought=ban_special_in_thought,
              temperature=temperature, batch_size=batch_size, thought_style=thought_style)
    dec = dict(max_thought_tokens=max_thought_tokens, max_prefix_tokens=max_prefix_tokens,
               ban=ban_special_in_thought, batch_size=max(batch_size, 64))
    out = {"temperature": temperature, "banned_special": ban_special_in_thought}
    rows = score_oracle(model, tokenizer, corpus_chunks, **kw)
    corpus = summarize_fidelity(rows)
    if per_chunk:
        corpus["chunks"] = [[r["position"], r["index"], r["log_q"]] for r in rows]
    pick = [corpus_chunks[i] for i in spread(len(corpus_chunks), decode_chunks)]
    corpus["greedy"] = _decoded_correct(model, tokenizer, pick, check, greedy=True, seed=seed,
                                        temperature=1.0, **dec)
    out["bootstrap"] = corpus
    if dev:
        d = summarize_fidelity(score_oracle(model, tokenizer, dev, **kw))
        d["greedy"] = _decoded_correct(model, tokenizer, dev, check, greedy=True, seed=seed, temperature=1.0, **dec)
        d["sampled"] = _decoded_correct(model, tokenizer, dev, check, greedy=False, seed=seed,
                                        temperature=temperature, **dec)
        out["dev"] = d
    return out
