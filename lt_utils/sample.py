"""Batched, KV-cached sampling that records the exact log-probability of every token.

Importance weights in the E-step need log q(z|x) of the distribution the
thought was *actually* drawn from, so this sampler never truncates: no
top-k, no top-p, temperature exactly as given.  (transformers' `generate`
falls back to top-k 50 from the default generation config unless told
otherwise; owning the loop keeps the proposal density explicit and tested
against teacher-forced rescoring.)  Greedy decoding is used for evaluation.
`score` gives log p of a continuation under teacher forcing.

Speed.  For a transformers Llama (every model of the study) the forward runs
in `lt_utils.kv_forward`: caches preallocated and written in place, a shared
prompt's keys stored once and read once per step by all its rows, finished
rows dropped from the batch as they stop.  Other architectures run the same
loop on transformers' dynamic cache.

Shared prompts.  The E-step samples K thoughts from each posterior prompt and
scores K continuations after each ``BOS prefix``.  Within a batch, identical
prompts (or contexts) are encoded once and their rows attend to that one
copy; prompts that all differ share their longest common prefix (the
few-shot exemplars of an evaluation).  ``share=False`` encodes every row on
its own, for checking.  Sharing changes only float rounding.

Random stream.  Row i of a call draws its uniforms from its own numpy
Generator, seeded by (seed, i), one uniform per step, and takes the token at
that point of its distribution's cumulative sum (inverse CDF, in float64).
A row's draws thus depend only on the seed and its place in the caller's
list: not on the batch size, the order rows are computed in, which prompts
are shared or which rows have finished, so rows can be bucketed by length
and dropped when done without changing any sample.  (Until this sampler, all
rows of a batch drew from one torch Generator through `torch.multinomial`,
which draws an exponential variate per row and vocabulary entry every step:
on CPU that alone cost more than the model's forward, and it tied each row's
sample to its batch.  The same seed therefore gives other samples than it
did then.)
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from lt_utils.kv_forward import KVLlama, Rows, right_pad, supports

# rows × positions × (heads · keys, or vocabulary) of one forward's largest tensor: bounds memory, not results
MAX_CELLS = int(os.environ.get("LT_MAX_CELLS", 1 << 24))


@dataclass
class Sample:
    tokens: list[int]        # generated ids, including the stop token if one was hit
    logprobs: list[float]    # log-prob of each generated id under the distribution it was drawn from
    finished: bool           # True if a stop token ended it (False: ran into max_new_tokens)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def split_prompts(seqs: Sequence[Sequence[int]], share: bool) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(distinct prefixes, each row's prefix index, each row's tail): row = prefix + tail, tail ≥ 1 token.

    A sequence repeated in the batch is its own prefix minus its last token;
    the sequences that occur once share their longest common prefix (when
    there is one); without `share` every row has its own prefix.
    """
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt / context needs at least one token (BOS)")
    counts = Counter(tuple(s) for s in seqs) if share else Counter()
    single = [s for s in seqs if counts[tuple(s)] == 1]
    common = 0
    if len(single) >= 2:
        common = min(len(s) for s in single) - 1
        for s in single[1:]:
            j = 0
            while j < common and s[j] == single[0][j]:
                j += 1
            common = j
    keys: dict[tuple, int] = {}
    heads, idx, tails = [], [], []
    for i, s in enumerate(seqs):
        if counts[tuple(s)] == 1 and common:
            key, cut = ("common",), common
        elif counts[tuple(s)] > 1:
            key, cut = ("repeated", tuple(s)), len(s) - 1
        else:
            key, cut = ("own", i), len(s) - 1
        if key not in keys:
            keys[key] = len(heads)
            heads.append(list(s[:cut]))
        idx.append(keys[key])
        tails.append(list(s[cut:]))
    return heads, idx, tails


# --------------------------------------------------------------------------- steppers: one decoding step of a batch
class _KVStepper:
    """Decoding steps on `kv_forward`: prompts prefilled as shared prefixes plus per-row tails."""

    def __init__(self, model, prompts, max_new_tokens: int, pad_id: int, share: bool):
        self.eng = KVLlama(model)
        heads, idx, tails = split_prompts(prompts, share)
        self.pre = self.eng.prefill(heads, pad_id)
        ids, valid = right_pad(tails, pad_id, self.eng.device)
        self.rows = self.eng.rows(self.pre, idx, ids.shape[1] + max_new_tokens - 1)
        last = valid.sum(1) - 1
        out = []
        per = _rows_per_chunk(ids.shape[1], self.eng.n_head * (self.pre.width + ids.shape[1]))
        for a in range(0, len(prompts), per):
            part = slice(a, a + per)
            sub = Rows([t[part] for t in self.rows.k], [t[part] for t in self.rows.v], self.rows.bias[part],
                       self.rows.prefix[part], self.rows.pos[part])
            h = self.eng.extend(self.pre, sub, ids[part], valid[part])
            out.append(self.eng.logits(h[torch.arange(h.shape[0], device=h.device), last[part]]))
            self.rows.pos[part] = sub.pos
        self.rows.width = ids.shape[1]
        self.first = torch.cat(out)

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        return self.eng.logits(self.eng.extend(self.pre, self.rows, nxt[:, None])[:, -1])

    def keep(self, idx: torch.Tensor) -> None:
        self.rows = self.rows.keep(idx)
        used = torch.unique(self.rows.prefix)
        if len(used) * 4 <= self.pre.n * 3:   # drop prefixes no row reads any more
            remap = torch.full((self.pre.n,), -1, dtype=torch.long, device=used.device)
            remap[used] = torch.arange(len(used), device=used.device)
            self.pre = self.pre.keep(used)
            self.rows.prefix = remap[self.rows.prefix]
            self.rows.slots = None


class _HFStepper:
    """The same steps through the model's own forward and transformers' dynamic cache (any architecture)."""

    def __init__(self, model, prompts, max_new_tokens: int, pad_id: int, share: bool):
        from transformers import DynamicCache

        self.model, dev = model, _device(model)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        self.mask = mask.to(dev)
        self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        out = model(input_ids=ids.to(dev), attention_mask=self.mask, position_ids=self.pos, use_cache=True,
                    **{_cache_kw(): self.cache})
        self.pos = self.pos[:, -1:] + 1
        self.first = out.logits[:, -1, :]

    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=nxt[:, None], attention_mask=self.mask, position_ids=self.pos, use_cache=True,
                         **{_cache_kw(): self.cache})
        self.pos = self.pos + 1
        return out.logits[:, -1, :]

    def keep(self, idx: torch.Tensor) -> None:
        self.cache.batch_select_indices(idx)
        self.mask, self.pos = self.mask[idx], self.pos[idx]


def _cache_kw() -> str:
    """Name of the KV-cache argument of transformers' forward: `cache` from 5.20 on, `past_key_values` before
    (an unknown keyword is swallowed silently, so the wrong one would decode without context)."""
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def _rows_per_chunk(n_pos: int, per_pos: int) -> int:
    return max(1, MAX_CELLS // max(1, n_pos * per_pos))


# --------------------------------------------------------------------------- sampling
def row_uniforms(seed: int, rows: Sequence[int], n: int) -> np.ndarray:
    """(len(rows), n) uniforms in [0, 1): row i's stream is numpy's default Generator seeded by (seed, i)."""
    return np.stack([np.random.default_rng([int(seed) & (2 ** 64 - 1), int(i)]).random(n) for i in rows]) \
        if len(rows) else np.zeros((0, n))


def draw(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: the first token whose cumulative probability exceeds u · total (zero-mass tokens,
    e.g. banned ones, are never drawn)."""
    cdf = logp.exp().double().cumsum(-1)
    x = (u.double() * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp(max=logp.shape[-1] - 1)


@torch.no_grad()
def _sample_batch(model, prompts, *, max_new_tokens: int, stop_ids: frozenset[int], greedy: bool,
                  temperature: float, banned_ids: Sequence[int], pad_id: int, uniforms: torch.Tensor | None,
                  share: bool = True) -> list[Sample]:
    device = _device(model)
    n = len(prompts)
    stepper = (_KVStepper if supports(model) else _HFStepper)(model, prompts, max_new_tokens, pad_id, share)
    logits = stepper.first
    live = torch.arange(n, device=device)              # batch row of each stepper row
    alive = torch.ones(n, dtype=torch.bool, device=device)
    toks = torch.full((n, max_new_tokens), -1, dtype=torch.long, device=device)
    lps = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device) if banned_ids else None
    for step in range(max_new_tokens):
        logits = logits.float()
        if banned is not None:
            logits[:, banned] = float("-inf")
        if greedy:
            logp = torch.log_softmax(logits, dim=-1)
            nxt = logp.argmax(-1)
        else:
            logp = torch.log_softmax(logits / temperature, dim=-1)
            nxt = draw(logp, uniforms[live, step])
        lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        toks[live[alive], step] = nxt[alive]
        lps[live[alive], step] = lp[alive]
        if stop is not None:
            alive = alive & ~torch.isin(nxt, stop)
        n_alive = int(alive.sum())
        if n_alive == 0 or step == max_new_tokens - 1:
            break
        if (len(alive) - n_alive) * 8 >= len(alive):    # drop finished rows once they are an eighth of the batch
            keep = alive.nonzero().squeeze(1)
            stepper.keep(keep)
            live, alive, nxt = live[keep], alive[keep], nxt[keep]
        logits = stepper.step(nxt)
    lengths = (toks >= 0).sum(1).tolist()
    toks_l, lps_l = toks.tolist(), lps.tolist()
    out = []
    for i in range(n):
        t = toks_l[i][:lengths[i]]
        out.append(Sample(t, lps_l[i][:lengths[i]], bool(t) and t[-1] in stop_ids))
    return out


def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: Iterable[int] = (),
           greedy: bool = False, temperature: float = 1.0, banned_ids: Sequence[int] = (), pad_id: int = 0,
           seed: int = 0, batch_size: int = 256, progress: bool = False, share: bool = True) -> list[Sample]:
    """Continue each prompt (token ids) until a stop id or `max_new_tokens`.

    Sampling is from softmax(logits / temperature) over the full vocabulary
    minus `banned_ids` (set to −inf, so the rest renormalise); each Sample's
    logprobs are under exactly that distribution: the tempered, renormalised
    proposal, not the model's own log p.  Prompts are sorted by length and
    computed `batch_size` rows at a time; the same inputs and seed give the
    same samples whatever the batch size (see the module note).  With
    `share`, a prompt repeated within a batch is encoded once.
    """
    if temperature <= 0 and not greedy:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax decoding)")
    stop_set = frozenset(int(s) for s in stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), list(prompts[i])))  # repeats side by side
    results: list[Sample | None] = [None] * len(prompts)
    device = _device(model)
    was_training = model.training
    model.eval()
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="sampling", unit="batch")
    for idx in batches:
        u = None if greedy else torch.from_numpy(row_uniforms(seed, idx, max_new_tokens)).to(device)
        outs = _sample_batch(model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, stop_ids=stop_set,
                             greedy=greedy, temperature=temperature, banned_ids=banned_ids, pad_id=pad_id,
                             uniforms=u, share=share)
        for i, s in zip(idx, outs):
            results[i] = s
    model.train(was_training)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- teacher-forced scoring
@torch.no_grad()
def score(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *, pad_id: int = 0,
          batch_size: int = 64, share: bool = True) -> list[list[float]]:
    """Per-token log p(continuation | context) by teacher forcing (context tokens themselves are not scored).

    Rows are grouped by context and cut into batches of `batch_size` rows;
    with `share`, each batch encodes its distinct contexts once and runs every
    continuation after its context's single copy (one batched prefill);
    without, every row is encoded on its own.
    """
    assert len(contexts) == len(continuations)
    was_training = model.training
    model.eval()
    out: list[list[float]] = [[] for _ in contexts]
    todo = [i for i in range(len(contexts)) if len(continuations[i])]
    if any(len(contexts[i]) == 0 for i in todo):
        raise ValueError("a scored continuation needs a context of at least one token (BOS)")
    order = score_order(contexts, continuations, share)
    run = _score_kv if supports(model) else _score_plain
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for i, lp in zip(idx, run(model, [contexts[i] for i in idx], [continuations[i] for i in idx], pad_id, share)):
            out[i] = lp
    model.train(was_training)
    return out


def score_order(contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], share: bool = True
                ) -> list[int]:
    """The rows `score` computes, in its order (it cuts batches of `batch_size` from this list): rows of one
    context side by side with `share`, else by total length.  Scoring any run of this order alone, in this order,
    forms the same batches."""
    todo = [i for i in range(len(contexts)) if len(continuations[i])]
    if not share:
        return sorted(todo, key=lambda i: len(contexts[i]) + len(continuations[i]))
    first: dict[tuple, int] = {}
    for i in todo:
        first.setdefault(tuple(contexts[i]), i)
    return sorted(todo, key=lambda i: (len(contexts[i]), first[tuple(contexts[i])], i))


def _score_kv(model, contexts, continuations, pad_id: int, share: bool) -> list[list[float]]:
    """One batch: distinct contexts (minus their last token) prefilled once, then every row's last context token
    and continuation in one pass after it; the logits at each position score the next token."""
    eng = KVLlama(model)
    heads, idx = _context_heads(contexts) if share else ([list(c[:-1]) for c in contexts], list(range(len(contexts))))
    pre = eng.prefill(heads, pad_id)
    tails = [list(c[len(heads[j]):]) + list(x) for c, x, j in zip(contexts, continuations, idx)]
    ids, valid = right_pad(tails, pad_id, eng.device)
    width = ids.shape[1]
    per = _rows_per_chunk(width, max(eng.n_head * (pre.width + width), model.config.vocab_size))
    out: list[list[float]] = []
    for a in range(0, len(tails), per):
        part = slice(a, a + per)
        rows = eng.rows(pre, idx[part], width)
        h = eng.extend(pre, rows, ids[part], valid[part])
        # logits only where they score a continuation token: row r's position start + i predicts token i
        starts = [len(c) - len(heads[j]) - 1 for c, j in zip(contexts[part], idx[part])]
        lens = [len(x) for x in continuations[part]]
        at = torch.cat([r * width + torch.arange(s, s + n) for r, (s, n) in enumerate(zip(starts, lens))]
                       ).to(h.device)
        logp = torch.log_softmax(eng.logits(h.reshape(-1, h.shape[-1]).index_select(0, at)).float(), dim=-1)
        got = logp.gather(-1, ids[part].reshape(-1)[at + 1, None]).squeeze(-1).tolist()
        for o, n in zip(itertools.accumulate(lens, initial=0), lens):
            out.append(got[o:o + n])
    return out


def _context_heads(contexts) -> tuple[list[list[int]], list[int]]:
    """Distinct contexts minus their last token (first-appearance order) and each row's index."""
    keys: dict[tuple, int] = {}
    heads, idx = [], []
    for c in contexts:
        k = tuple(c[:-1])
        if k not in keys:
            keys[k] = len(heads)
            heads.append(list(k))
        idx.append(keys[k])
    return heads, idx


def _score_plain(model, contexts, continuations, pad_id: int, share: bool) -> list[list[float]]:
    """One batch through the model's own forward, every row one left-padded sequence (any architecture)."""
    device = _device(model)
    seqs = [list(c) + list(x) for c, x in zip(contexts, continuations)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return [logp[r, width - 1 - len(x):].tolist() for r, x in enumerate(continuations)]
