"""Held-out accuracy and validation likelihood, with few-shot prompts that are fair to every arm.

Every model sees `BOS [exemplars] Problem: {q} Answer:`.  The exemplars (a few
solved problems, the same ones for every arm) show the answer format in
context, as the paper's few-shot evaluation does, so an arm whose training
text never showed that format (the WRAP arms) is not failed for format alone.
Three styles of exemplar:

* ``direct`` -- ``Problem: q Answer: a.``, the raw format;
* ``cot`` -- the answer is preceded by the step-by-step reasoning of a WRAP-CoT
  rewrite and closed by ``The answer is a.``; where such exemplars do not fit
  the model's context, the raw-format exemplars are shown instead;
* ``latent`` -- the paper's latent variant: ``Problem: q Answer: SoL PRI z EoL a.``
  and the prompt ends with ``SoL PRI``, so the model thinks before answering.

Every arm sees the same *number* of exemplars (`common_shot_count`): as many
as the longest format fits, for every question, within the positions the
model was trained on.  A model is never asked to work at positions beyond its
training row: with rotary positions and attention kept inside each document,
those positions and relative distances were never trained, so a longer
evaluation context would test extrapolation rather than the arm.  Fewer but
equal shots keep the comparison fair: before, a latent prompt kept 1–2
exemplars where a direct prompt kept 3.  The WRAP-CoT reasoning exemplars
(170–260 tokens) rarely fit; a cot prompt then shows the same exemplars in the
raw format.

A non-latent model answers with latent tokens banned, as the paper does.
Answers are compared with sympy equivalence; an answer with no number in it
counts as wrong and is reported separately as unparseable.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from lt_utils.sample import sample
from lt_utils.tokens import EOL, PRIOR, SOL, SpecialIds, encode, newline_ids

_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*\.?\s*$")
_ANSWER_IS = re.compile(r"answer is\s+(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
STYLES = ("direct", "cot", "latent")
ANSWER_TOKENS = {"direct": 64, "cot": 96, "latent": 96}   # new tokens per eval style (room to reason)


def problem_prompt(question: str) -> str:
    return f"Problem: {question} Answer:"


def parse_answer(text: str) -> str | None:
    """The answer in a generated continuation, read from the line after the last EoL.

    An unclosed thought has no answer.  A bare number wins; otherwise the number after the last "answer is"; otherwise
    the line's last number (GSM8K-style extraction); None if the line has no number.
    """
    if SOL in text and EOL not in text.split(SOL)[-1]:
        return None  # the thought was never closed, so no answer was given
    if EOL in text:
        text = text.split(EOL)[-1]
    line = text.split("\n", 1)[0]
    m = _NUMBER.match(line)
    if m:
        return m.group(1)
    hits = _ANSWER_IS.findall(line)
    if hits:
        return hits[-1]
    nums = _ANY_NUMBER.findall(line)
    return nums[-1] if nums else None


def exemplar_units(docs, n_shots: int) -> list[dict]:
    """`n_shots` solved problems for few-shot prompts, cycling over the families in order of appearance.

    Drawn from documents the models never train on (the validation split), so
    every arm sees the same exemplars.  Each is a dict with the unit's fields.
    """
    by_family: dict[str, list] = defaultdict(list)
    for d in docs:
        for u in d.units:
            by_family[u.family].append(u)
    fams = list(by_family)
    picked = []
    i = 0
    while len(picked) < n_shots and fams and i < n_shots * len(fams) + len(fams):
        fam = fams[i % len(fams)]
        j = i // len(fams)
        if j < len(by_family[fam]):
            picked.append(by_family[fam][j].to_dict())
        i += 1
    return picked


def _exemplar_ids(tokenizer, ids: SpecialIds, ex: dict, style: str) -> list[int]:
    head = encode(tokenizer, problem_prompt(ex["question"]))
    if style == "latent":
        return head + [ids.sol, ids.prior] + encode(tokenizer, ex["thought"]) + [ids.eol] + \
            encode(tokenizer, f" {ex['answer']}.\n")
    if style == "cot":
        from lt_utils.wrap_baselines import cot_unit
        from lt_utils.world import Unit

        return head + encode(tokenizer, f" {cot_unit(Unit.from_dict(ex))} The answer is {ex['answer']}.\n")
    return head + encode(tokenizer, f" {ex['answer']}.\n")


def few_shot_prompts(tokenizer, questions: Sequence[str], *, style: str, shots: Sequence[dict] = (),
                     max_len: int = 0) -> list[list[int]]:
    """Token ids of `BOS [exemplars] Problem: q Answer:` (+ `SoL PRI` for the latent style).

    With `max_len`, the earliest exemplars are dropped until the prompt fits
    (a model is never asked to work at positions it was not trained on); a
    cot prompt whose reasoning exemplars do not all fit shows them in the raw
    format instead, so it keeps as many as a direct prompt.  Pass shots cut
    to `common_shot_count` for equal counts across styles.
    """
    if style not in STYLES:
        raise ValueError(f"unknown eval style '{style}' (known: {', '.join(STYLES)})")
    ids = SpecialIds.of(tokenizer)
    pieces = [_exemplar_ids(tokenizer, ids, ex, style) for ex in shots]
    fallback = [_exemplar_ids(tokenizer, ids, ex, "direct") for ex in shots] if style == "cot" else []
    prompts = []
    for q in questions:
        tail = encode(tokenizer, problem_prompt(q)) + ([ids.sol, ids.prior] if style == "latent" else [])
        fits = not max_len or 1 + sum(map(len, pieces)) + len(tail) <= max_len
        used = _fit(fallback if fallback and not fits else pieces, len(tail), max_len)
        prompts.append([ids.bos] + [t for p in used for t in p] + tail)
    return prompts


def _fit(pieces: list[list[int]], tail_len: int, max_len: int) -> list[list[int]]:
    """The latest exemplars that fit with BOS and the question within `max_len` tokens (0 = no limit)."""
    used = list(pieces)
    while used and max_len and 1 + sum(map(len, used)) + tail_len > max_len:
        used.pop(0)
    return used


def common_shot_count(tokenizer, questions: Sequence[str], shots: Sequence[dict], max_pos: int) -> int:
    """The most exemplars (the first n of `shots`) that every style's prompt fits, for every question.

    Each style keeps room for its answer (`ANSWER_TOKENS`) within `max_pos`
    positions (0 = no limit).  Computed from the questions, the exemplars and
    the context alone, so every arm evaluated on the same problems gets the
    same count.  The cot style is bound by its raw-format fallback, i.e. by
    the direct style.
    """
    if not max_pos or not shots:
        return len(shots)
    ids = SpecialIds.of(tokenizer)
    tails = [len(encode(tokenizer, problem_prompt(q))) for q in questions] or [0]
    n = len(shots)
    for style in ("direct", "latent"):
        lens = [len(_exemplar_ids(tokenizer, ids, ex, style)) for ex in shots]
        room = max_pos - ANSWER_TOKENS[style] - 1 - max(tails) - (2 if style == "latent" else 0)
        while n and sum(lens[:n]) > room:
            n -= 1
    return n


def answers_equal(predicted: str | None, gold: str) -> bool:
    """Mathematical equivalence via sympy (so "7", "7.0" and "07" agree)."""
    if predicted is None:
        return False
    if predicted.strip() == gold.strip():
        return True
    import sympy

    def to_sympy(x: str):
        try:
            return sympy.Rational(x.strip())  # exact for integers and decimals, leading zeros allowed
        except (TypeError, ValueError):
            return sympy.sympify(x)

    try:
        return bool(sympy.simplify(to_sympy(predicted) - to_sympy(gold)) == 0)
    except (sympy.SympifyError, TypeError, ValueError, SyntaxError):
        return False


@dataclass
class EvalResult:
    accuracy: float
    unparseable: float                 # fraction of answers that could not be read
    per_family: dict[str, float]
    records: list[dict]                # one per problem: question, gold, generated text, parsed, correct
    shots: int = 0                     # exemplars in every prompt

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}unparseable": self.unparseable,
               f"{prefix}eval_shots": self.shots}
        out.update({f"{prefix}accuracy/{fam}": acc for fam, acc in self.per_family.items()})
        return out


def evaluate_problems(model, tokenizer, problems: Sequence, *, latent: bool = False, style: str | None = None,
                      shots: Sequence[dict] = (), max_new_tokens: int | None = None, batch_size: int = 256,
                      with_records: bool = False, n_shots: int | None = None) -> EvalResult:
    """Greedy answers to `problems` (objects with .question, .answer, .family).

    `style` is "direct", "cot" or "latent" (default: "latent" if `latent` else
    "direct"); `shots` are exemplar dicts from `exemplar_units`, of which the
    first `n_shots` are shown (default: `common_shot_count` for these
    problems, the same for every style).  `max_new_tokens` defaults to the
    style's `ANSWER_TOKENS`.
    """
    style = style or ("latent" if latent else "direct")
    latent = style == "latent"
    max_new_tokens = ANSWER_TOKENS[style] if max_new_tokens is None else max_new_tokens
    ids = SpecialIds.of(tokenizer)
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if n_shots is None:
        n_shots = common_shot_count(tokenizer, [p.question for p in problems], shots, max_pos)
    shots = list(shots)[:n_shots]
    prompts = few_shot_prompts(tokenizer, [p.question for p in problems], style=style, shots=shots,
                               max_len=max(max_pos - max_new_tokens, 0))
    stops = set(newline_ids(tokenizer)) | {ids.eos}
    banned = [] if latent else list(ids.latent)
    samples = sample(model, prompts, max_new_tokens=max_new_tokens, stop_ids=stops, greedy=True,
                     banned_ids=banned, pad_id=ids.pad, batch_size=batch_size)
    correct = []
    parsed_ok = []
    fam_hits: dict[str, list[bool]] = defaultdict(list)
    records = []
    for p, s in zip(problems, samples):
        text = tokenizer.decode(s.tokens, skip_special_tokens=False)
        if latent:
            text = SOL + PRIOR + text
        pred = parse_answer(text)
        ok = answers_equal(pred, p.answer)
        correct.append(ok)
        parsed_ok.append(pred is not None)
        fam_hits[p.family].append(ok)
        if with_records:
            records.append({"question": p.question, "family": p.family, "gold": p.answer,
                            "generated": text, "predicted": pred, "correct": ok})
    n = max(len(problems), 1)
    return EvalResult(
        accuracy=sum(correct) / n,
        unparseable=1 - sum(parsed_ok) / n,
        per_family={f: float(np.mean(v)) for f, v in sorted(fam_hits.items())},
        records=records,
        shots=len(shots),
    )


@torch.no_grad()
def validation_nll(model, rows, batch_size: int = 32) -> float:
    """Mean negative log-likelihood per token (nats) over packed rows of raw validation text."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(rows), batch_size):
        ids = torch.as_tensor(rows.input_ids[s:s + batch_size], device=device)
        pos = torch.as_tensor(rows.position_ids[s:s + batch_size], device=device)
        labels = torch.as_tensor(rows.labels[s:s + batch_size], device=device)
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = labels[:, 1:]
        keep = tgt != -100
        nll = -logp.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)
        total += float(nll[keep].sum())
        count += int(keep.sum())
    model.train(was_training)
    return total / max(count, 1) if count else math.nan
