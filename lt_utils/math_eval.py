"""Few-shot MATH and GSM8K evaluation for the paper-scale path.

The paper scores its pretrained models with few-shot chain-of-thought prompts
(MATH 4-shot, GSM8K 8-shot, greedy decoding).  A model trained on
latent-augmented text is given a *latent* variant of each prompt: every
exemplar's reasoning sits inside a thought, `SoL PRI ... EoL`, with the final
answer sentence after EoL, and the prompt for the test problem ends with
`SoL PRI`, so the model writes its reasoning as a thought, closes it and
answers.  A model trained on raw text gets the standard prompt with the four
latent tokens banned.

This module does the same with exemplars of its own (below), on local jsonl
files in the Hugging Face hub schemas (downloading them is left to the user):

* MATH: `problem`, `solution`, `level`, `type`; the gold answer is the last
  `\\boxed{...}` of the solution.  Checked with math-verify (`parse` both,
  `verify(gold, prediction)`), as the paper does.
* GSM8K: `question`, `answer`; the gold number follows `####`.  Checked by the
  last number of the answer ("flexible-extract", the metric the paper plots).

For a latent model, only the text after the (last) EoL is checked when the
model closed its thought, else the whole generation.  (The paper's latent
GSM8K filters read the thought up to EoL instead; the exemplars end both with
the same number, so the two agree whenever the model follows the format.)

Prompt truncation.  The paper's generator is configured to left-truncate
prompts to 1024 tokens without a word; if it does, exemplars of the 8-shot
GSM8K and 4-shot MATH prompts were likely cut mid-text.  Here `max_prompt_tokens` drops whole exemplars
from the front instead (never the test problem) and every evaluation reports
how many prompts lost exemplars, so truncation is never silent.

Stops.  Generation ends at EOS (token level) and is cut after decoding at the
first "Problem:" / "Question:" (text level; for latent models also at a new
SoL, which is one token and therefore also a token-level stop).  EoL is *not*
a stop for latent models: the answer comes after it.

Sampling with `temperature > 0` draws from the full softmax (no top-p/top-k);
the paper's fine-tuning evaluation used T=0.6, top-p 0.9, top-k 50.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Sequence

from lt_utils.sample import sample
from lt_utils.stats import mean_se
from lt_utils.tokens import EOL, PRIOR, SOL, SpecialIds, encode

TASKS = ("math", "gsm8k")
STOP_STRINGS = ("Problem:", "Question:")
EXEMPLAR_SEPARATOR = "\n\n"


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One test problem: its text, the gold answer and (MATH) its subject and level."""

    question: str
    answer: str                 # MATH: content of the last \boxed{...}; GSM8K: the number after ####, no commas
    solution: str = ""          # the reference solution as stored in the file
    type: str = ""              # MATH subject, e.g. "Algebra"
    level: str = ""             # MATH difficulty, e.g. "Level 3"


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed X`) in `text`; braces may nest."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    for m in reversed(starts):
        rest = text[m.end():]
        if rest.startswith("{"):
            depth, i = 0, 0
            while i < len(rest):
                ch = rest[i]
                if ch == "\\":      # escaped character such as \{ or \}: never a grouping brace
                    i += 2
                    continue
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return rest[1:i].strip()
                i += 1
            continue               # unbalanced: try an earlier one
        plain = re.match(r"\s+([^\s$]+)", rest)   # "\boxed 5" (no braces)
        if plain:
            return plain.group(1)
    return None


def _gsm8k_gold(answer: str) -> str | None:
    if "####" not in answer:
        return None
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "").strip()
    try:
        Decimal(gold)
    except InvalidOperation:
        return None
    return gold


def load_problems(path: str | Path, task: str, *, limit: int | None = None, rejects=None) -> list[Problem]:
    """Problems from a local jsonl file in the hub schema of `task` ("math" or "gsm8k").

    A bad line (not UTF-8, not JSON, a field missing, no final answer) raises a
    one-line error naming file and line; with `rejects` (a `skipped_inputs.Rejects`)
    it is counted there by reason and skipped instead.
    """
    _check_task(task)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{task} problems not found: {path}")
    fields = ("problem", "solution") if task == "math" else ("question", "answer")
    out: list[Problem] = []

    def bad(reason: str, where: str, message: str) -> None:
        if rejects is None:
            raise ValueError(f"{where}: {message}")
        rejects.add(reason, where)

    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad("non_utf8", where, f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad("invalid_json", where, f"not valid JSON ({e.msg})")
                continue
            if not isinstance(rec, dict):
                bad("not_an_object", where, f"expected a JSON object per line, got {type(rec).__name__}")
                continue
            missing = [f for f in fields if not isinstance(rec.get(f), str)]
            if missing:
                bad("missing_field", where, f"{task} record lacks string field {missing[0]!r} "
                                            f"(has {sorted(rec)}); expected fields {list(fields)}")
                continue
            if task == "math":
                gold = last_boxed(rec["solution"])
                if gold is None:
                    bad("no_answer", where, "field 'solution' has no \\boxed{...} answer")
                    continue
                out.append(Problem(rec["problem"], gold, rec["solution"],
                                   str(rec.get("type", rec.get("subject", ""))), str(rec.get("level", ""))))
            else:
                gold = _gsm8k_gold(rec["answer"])
                if gold is None:
                    bad("no_answer", where, "field 'answer' lacks a '#### <number>' final answer")
                    continue
                out.append(Problem(rec["question"], gold, rec["answer"]))
            if limit is not None and len(out) >= limit:
                break
    return out


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Exemplar:
    question: str
    reasoning: str              # step-by-step working, without the final-answer sentence
    answer: str


# Written for this study: short problems whose working fits a few sentences.
MATH_EXEMPLARS: tuple[Exemplar, ...] = (
    Exemplar(
        "Solve for $x$: $3x + 7 = 22$.",
        "Subtracting $7$ from both sides gives $3x = 15$. Dividing both sides by $3$ gives $x = 5$.",
        "5",
    ),
    Exemplar(
        "A right triangle has legs of length $6$ and $8$. What is the length of its hypotenuse?",
        "By the Pythagorean theorem, the hypotenuse has length $\\sqrt{6^2 + 8^2} = \\sqrt{36 + 64} "
        "= \\sqrt{100} = 10$.",
        "10",
    ),
    Exemplar(
        "What is the remainder when $2^{10}$ is divided by $7$?",
        "Since $2^3 = 8 \\equiv 1 \\pmod{7}$ and $10 = 3 \\cdot 3 + 1$, we get "
        "$2^{10} = (2^3)^3 \\cdot 2 \\equiv 1^3 \\cdot 2 = 2 \\pmod{7}$. The remainder is $2$.",
        "2",
    ),
    Exemplar(
        "Compute $\\frac{3}{4} - \\frac{1}{6}$. Express your answer as a common fraction.",
        "The least common denominator of $4$ and $6$ is $12$. We have $\\frac{3}{4} = \\frac{9}{12}$ and "
        "$\\frac{1}{6} = \\frac{2}{12}$, so the difference is $\\frac{9}{12} - \\frac{2}{12} = \\frac{7}{12}$.",
        "\\frac{7}{12}",
    ),
)

GSM8K_EXEMPLARS: tuple[Exemplar, ...] = (
    Exemplar(
        "Maya has 14 stickers. She buys 3 packs with 6 stickers in each pack. How many stickers does she have now?",
        "The 3 packs hold 3 * 6 = 18 stickers. Maya now has 14 + 18 = 32 stickers.",
        "32",
    ),
    Exemplar(
        "A bakery sells muffins for $2 each. It sold 45 muffins on Monday and twice as many on Tuesday. "
        "How many dollars did it make from muffins on those two days?",
        "On Tuesday it sold 2 * 45 = 90 muffins. Over the two days it sold 45 + 90 = 135 muffins, "
        "which brought in 135 * 2 = $270.",
        "270",
    ),
    Exemplar(
        "Tom reads 12 pages every day. How many days does he need to finish a book of 180 pages?",
        "He needs 180 / 12 = 15 days.",
        "15",
    ),
    Exemplar(
        "A jacket costs $40 and is on sale for 25% off. What is the sale price in dollars?",
        "The discount is 25% of $40, which is 0.25 * 40 = $10. The sale price is 40 - 10 = $30.",
        "30",
    ),
    Exemplar(
        "A hall has 5 rows of chairs with 18 chairs in each row. If 67 people each take a chair, "
        "how many chairs are still empty?",
        "There are 5 * 18 = 90 chairs. After 67 are taken, 90 - 67 = 23 chairs are empty.",
        "23",
    ),
    Exemplar(
        "Lena earns $15 per hour. She worked 8 hours on Saturday and 6 hours on Sunday. "
        "How much did she earn over the weekend?",
        "She worked 8 + 6 = 14 hours, so she earned 14 * 15 = $210.",
        "210",
    ),
    Exemplar(
        "A farmer has 12 cows and three times as many chickens as cows. How many animals does he have in total?",
        "He has 3 * 12 = 36 chickens. Together with the cows that makes 36 + 12 = 48 animals.",
        "48",
    ),
    Exemplar(
        "A tank holds 1,200 liters of water. A pump removes 75 liters every minute. "
        "How many liters are left after 10 minutes?",
        "In 10 minutes the pump removes 75 * 10 = 750 liters, so 1,200 - 750 = 450 liters are left.",
        "450",
    ),
)


def exemplars(task: str) -> tuple[Exemplar, ...]:
    return MATH_EXEMPLARS if _check_task(task) == "math" else GSM8K_EXEMPLARS


def final_sentence(task: str, answer: str) -> str:
    """The sentence that closes every worked solution."""
    if _check_task(task) == "math":
        return f"Final Answer: The final answer is ${answer}$."
    return f"The final answer is {answer}."


def _head(task: str, question: str) -> str:
    return f"Problem:\n{question}\n\n" if task == "math" else f"Question: {question}\n"


def _label(task: str) -> str:
    return "Solution:" if task == "math" else "Answer:"


def _exemplar_block(task: str, ex: Exemplar, latent: bool) -> str:
    if latent:  # the reasoning becomes the thought; the answer sentence is the observed text after it
        return _head(task, ex.question) + SOL + PRIOR + ex.reasoning + EOL + " " + final_sentence(task, ex.answer)
    sep = "\n" if task == "math" else " "
    return _head(task, ex.question) + _label(task) + " " + ex.reasoning + sep + final_sentence(task, ex.answer)


def _query_block(task: str, question: str, latent: bool) -> str:
    return _head(task, question) + (SOL + PRIOR if latent else _label(task))


def build_prompt(task: str, problem_text: str, *, latent: bool, n_shots: int | None = None) -> str:
    """Few-shot prompt for one problem: exemplars, then the problem, ready for the model to continue.

    Standard: MATH "Problem:\\n{problem}\\n\\nSolution:", GSM8K "Question: {q}\\nAnswer:".
    Latent: each exemplar is "{head}SoL PRI {reasoning} EoL {final sentence}" and the prompt ends
    "{head}SoL PRI" (the "Solution:"/"Answer:" label is dropped, as in the paper's latent variants).
    `n_shots` keeps only the last `n_shots` exemplars (what dropping exemplars from the front leaves).
    """
    exs = exemplars(task)
    if n_shots is not None:
        if not 0 <= n_shots <= len(exs):
            raise ValueError(f"n_shots must be in [0, {len(exs)}] for {task}, got {n_shots}")
        exs = exs[len(exs) - n_shots:]
    blocks = [_exemplar_block(task, ex, latent) for ex in exs] + [_query_block(task, problem_text, latent)]
    return EXEMPLAR_SEPARATOR.join(blocks)


@dataclass(frozen=True)
class PromptIds:
    ids: list[int]
    shots: int                  # exemplars kept
    over_limit: bool            # even the zero-shot prompt exceeds max_prompt_tokens (kept whole)

    def truncated(self, task: str) -> bool:
        return self.shots < len(exemplars(task))


def encode_prompt(tokenizer, task: str, problem_text: str, *, latent: bool,
                  max_prompt_tokens: int | None = None) -> PromptIds:
    """BOS + the prompt's ids, dropping exemplars from the front until it fits `max_prompt_tokens`."""
    bos = SpecialIds.of(tokenizer).bos
    n = len(exemplars(task))
    for shots in range(n, -1, -1):
        ids = [bos] + encode(tokenizer, build_prompt(task, problem_text, latent=latent, n_shots=shots))
        if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
            return PromptIds(ids, shots, False)
    return PromptIds(ids, 0, True)


# --------------------------------------------------------------------------- decoding


@dataclass
class Generations:
    """Decoded continuations, `texts[i][j]` = sample j for problem i, already cut at the first stop."""

    texts: list[list[str]]
    finished: list[list[bool]]  # ended by EOS or a stop string (False: ran into max_new_tokens)
    shots: list[int]            # exemplars kept in each problem's prompt
    prompt_tokens: list[int]
    truncated: int              # prompts that lost at least one exemplar to max_prompt_tokens
    over_limit: int             # prompts longer than max_prompt_tokens even with no exemplar


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _text_of(p) -> str:
    return p if isinstance(p, str) else p.question


def generate_answers(model, tokenizer, problems: Sequence, *, task: str, latent: bool, n_samples: int = 1,
                     temperature: float = 0.0, max_new_tokens: int = 512, max_prompt_tokens: int | None = None,
                     seed: int = 0, batch_size: int = 16) -> Generations:
    """`n_samples` continuations of each problem's few-shot prompt (greedy when `temperature` is 0).

    Greedy samples of one prompt are identical, so greedy decoding runs once per problem and is repeated.
    """
    _check_task(task)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    ids = SpecialIds.of(tokenizer)
    prompts = [encode_prompt(tokenizer, task, _text_of(p), latent=latent, max_prompt_tokens=max_prompt_tokens)
               for p in problems]
    greedy = temperature == 0
    reps = 1 if greedy else n_samples
    stop_ids = {ids.eos} | ({ids.sol} if latent else set())
    stops = STOP_STRINGS + ((SOL,) if latent else ())
    samples = sample(model, [pr.ids for pr in prompts for _ in range(reps)], max_new_tokens=max_new_tokens,
                     stop_ids=stop_ids, greedy=greedy, temperature=temperature if not greedy else 1.0,
                     banned_ids=[] if latent else list(ids.latent), pad_id=ids.pad, seed=seed,
                     batch_size=batch_size)
    texts, finished = [], []
    for i in range(len(prompts)):
        row_t, row_f = [], []
        for s in samples[i * reps:(i + 1) * reps]:
            toks = s.tokens[:-1] if s.tokens and s.tokens[-1] == ids.eos else s.tokens
            text, hit = cut_at_stop(tokenizer.decode(toks, skip_special_tokens=False), stops)
            row_t.append(text)
            row_f.append(hit or s.finished)
        texts.append(row_t * (n_samples // reps))
        finished.append(row_f * (n_samples // reps))
    return Generations(
        texts=texts, finished=finished, shots=[p.shots for p in prompts],
        prompt_tokens=[len(p.ids) for p in prompts],
        truncated=sum(p.truncated(task) for p in prompts), over_limit=sum(p.over_limit for p in prompts),
    )


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Check:
    correct: bool
    parsed: bool                # an answer could be read from the generation at all
    predicted: str | None       # what was read (for records)


def answer_text(generated: str) -> str:
    """The part of a generation that holds the answer: after the last EoL if the thought was closed."""
    return generated.rsplit(EOL, 1)[1] if EOL in generated else generated


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def check_math(generated: str, gold: str) -> Check:
    """math-verify equivalence of the generation's answer with the gold answer (a \\boxed{} content)."""
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only the main thread may set
    timeout = 5 if _in_main_thread() else None
    gold_parsed = parse(f"$\\boxed{{{gold}}}$", parsing_timeout=timeout)
    if not gold_parsed:
        gold_parsed = parse(gold, parsing_timeout=timeout)
    pred_parsed = parse(answer_text(generated), parsing_timeout=timeout)
    if not pred_parsed:
        return Check(False, False, None)
    ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout)) if gold_parsed else False
    return Check(ok, True, str(pred_parsed[-1]))


_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in `text`, with thousands commas and "$" removed ("$1,200.50" -> "1200.50")."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").replace("$", "") if found else None


def check_gsm8k(generated: str, gold: str) -> Check:
    """Last number of the answer text equals the gold number (numerically: "18.00" == "18")."""
    pred = last_number(answer_text(generated))
    if pred is None:
        return Check(False, False, None)
    try:
        ok = Decimal(pred) == Decimal(gold.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        ok = False
    return Check(ok, True, pred)


def check(task: str, generated: str, gold: str) -> Check:
    return check_math(generated, gold) if _check_task(task) == "math" else check_gsm8k(generated, gold)


# --------------------------------------------------------------------------- evaluation


def _group_accuracy(keys: Sequence[str], per_problem: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for k, acc in zip(keys, per_problem):
        groups[k].append(acc)
    return {k: float(sum(v) / len(v)) for k, v in sorted(groups.items())}


def evaluate(model, tokenizer, problems: Sequence[Problem], *, task: str, latent: bool, n_samples: int = 1,
             temperature: float = 0.0, max_new_tokens: int = 512, max_prompt_tokens: int | None = None,
             seed: int = 0, batch_size: int = 16, records: bool = False) -> dict:
    """Few-shot accuracy of `model` on `problems`.

    Returns a dict with `accuracy` (over all samples; every problem has the same number of samples, so
    this equals the mean of per-problem accuracies) and `accuracy_se` (SE of that mean over problems),
    `unparseable` (fraction of samples with no readable answer, all counted wrong), `unfinished`
    (fraction that ran into `max_new_tokens`), `truncated_prompts` / `overlong_prompts` / `mean_shots`,
    `thought_closed` (latent: fraction of samples with an EoL; NaN otherwise), and for MATH
    `per_type` / `per_level` accuracies.  `records=True` adds one dict per sample under `records`.
    """
    _check_task(task)
    gens = generate_answers(model, tokenizer, problems, task=task, latent=latent, n_samples=n_samples,
                            temperature=temperature, max_new_tokens=max_new_tokens,
                            max_prompt_tokens=max_prompt_tokens, seed=seed, batch_size=batch_size)
    per_problem, n_correct, n_parsed, n_finished, n_closed, n_total = [], 0, 0, 0, 0, 0
    recs: list[dict] = []
    for i, p in enumerate(problems):
        hits = 0
        for j, (text, fin) in enumerate(zip(gens.texts[i], gens.finished[i])):
            c = check(task, text, p.answer)
            hits += c.correct
            n_parsed += c.parsed
            n_finished += fin
            n_closed += EOL in text
            n_total += 1
            if records:
                recs.append({"problem": i, "sample": j, "question": p.question, "gold": p.answer,
                             "type": p.type, "level": p.level, "generated": text, "predicted": c.predicted,
                             "parsed": c.parsed, "correct": c.correct, "finished": fin,
                             "shots": gens.shots[i], "prompt_tokens": gens.prompt_tokens[i]})
        n_correct += hits
        per_problem.append(hits / n_samples)
    mean, se, _ = mean_se(per_problem)
    out = {
        "task": task, "latent": latent, "n_problems": len(problems), "n_samples": n_samples,
        "accuracy": n_correct / n_total if n_total else math.nan,
        "accuracy_se": se,
        "unparseable": 1 - n_parsed / n_total if n_total else math.nan,
        "unfinished": 1 - n_finished / n_total if n_total else math.nan,
        "thought_closed": (n_closed / n_total if n_total else math.nan) if latent else math.nan,
        "truncated_prompts": gens.truncated,
        "overlong_prompts": gens.over_limit,
        "mean_shots": sum(gens.shots) / len(gens.shots) if gens.shots else math.nan,
        "max_prompt_tokens": max_prompt_tokens,
    }
    assert not per_problem or math.isclose(mean, out["accuracy"])
    if task == "math":
        out["per_type"] = _group_accuracy([p.type for p in problems], per_problem)
        out["per_level"] = _group_accuracy([p.level for p in problems], per_problem)
    if records:
        out["records"] = recs
    return out


__all__ = [
    "Check", "Exemplar", "GSM8K_EXEMPLARS", "Generations", "MATH_EXEMPLARS", "Problem",
    "PromptIds", "STOP_STRINGS", "TASKS", "answer_text", "build_prompt", "check", "check_gsm8k", "check_math",
    "cut_at_stop", "encode_prompt", "evaluate", "exemplars", "final_sentence", "generate_answers",
    "last_boxed", "last_number", "load_problems",
]
