"""Held-out accuracy and validation likelihood, with one prompt format for every arm.

Every model sees `BOS Problem: {q} Answer:`.  A raw-trained model answers at
once (latent tokens banned, as the paper does for non-latent tasks); a
latent-trained model is prompted to think first -- the prompt ends with
`SoL PRI`, it writes its thought, closes it with EoL and then answers, as in
the paper's latent evaluation variants.  Answers are compared with sympy
equivalence; an answer that cannot be parsed counts as wrong and is reported
separately.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .sample import sample
from .tokens import EOL, PRIOR, SOL, SpecialIds, encode, newline_ids

_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*\.?\s*$")


def problem_prompt(question: str) -> str:
    return f"Problem: {question} Answer:"


def parse_answer(text: str) -> str | None:
    """The answer in a generated continuation: what follows the last EoL, up to the first newline."""
    if EOL in text:
        text = text.split(EOL)[-1]
    line = text.split("\n", 1)[0]
    m = _NUMBER.match(line)
    return m.group(1) if m else None


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

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}unparseable": self.unparseable}
        out.update({f"{prefix}accuracy/{fam}": acc for fam, acc in self.per_family.items()})
        return out


def evaluate_problems(model, tokenizer, problems: Sequence, *, latent: bool, max_new_tokens: int = 96,
                      batch_size: int = 256, with_records: bool = False) -> EvalResult:
    """Greedy answers to `problems` (objects with .question, .answer, .family)."""
    ids = SpecialIds.of(tokenizer)
    prompts = []
    for p in problems:
        prompt = [ids.bos] + encode(tokenizer, problem_prompt(p.question))
        if latent:
            prompt += [ids.sol, ids.prior]
        prompts.append(prompt)
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
