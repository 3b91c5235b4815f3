"""Batched, KV-cached sampling that records the exact log-probability of every token.

Importance weights in the E-step need log q(z|x) of the distribution the
thought was *actually* drawn from, so this sampler never truncates: no
top-k, no top-p, temperature exactly as given.  (transformers' `generate`
falls back to top-k 50 from the default generation config unless told
otherwise; owning this ~100-line loop keeps the proposal density explicit and
tested against teacher-forced rescoring.)  Greedy decoding is used for
evaluation.  `score` gives log p of a continuation under teacher forcing.

Shared prompts.  The E-step samples K thoughts from each posterior prompt and
scores K continuations after each ``BOS prefix``.  Identical prompts (or
contexts) within a batch are encoded once and their KV cache is copied to
every row that repeats them, so the prompt costs one prefill instead of K.
The rows, their order and the random stream are those of the unshared
computation; only float rounding of the prefill may differ (``share=False``
gives the unshared path, for checking).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch


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


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@functools.lru_cache(maxsize=None)
def _cache_kw() -> str:
    """Name of the KV-cache argument of transformers' forward: `cache` from 5.20 on, `past_key_values` before.

    An unknown keyword is swallowed silently, so passing the wrong one would
    decode every new token without its context (the vLLM environment pins an
    older transformers than the base install).
    """
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@functools.lru_cache(maxsize=None)
def _last_logits_kw() -> dict:
    """``logits_to_keep=1`` where transformers supports it: a prefill needs the last position's logits only."""
    import inspect

    from transformers import LlamaForCausalLM

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(LlamaForCausalLM.forward).parameters else {}


def _dedup(seqs: Sequence[Sequence[int]], share: bool) -> tuple[list[Sequence[int]], list[int]]:
    """Distinct sequences (first-appearance order) and, per row, the index of its sequence."""
    if not share:
        return list(seqs), list(range(len(seqs)))
    first: dict[tuple, int] = {}
    src = [first.setdefault(tuple(s), len(first)) for s in seqs]
    return [list(k) for k in first], src


def _prefill(model, seqs: Sequence[Sequence[int]], pad_id: int, device, share: bool):
    """Encode each distinct sequence once; returns (cache, last-position logits, mask, positions) per row."""
    from transformers import DynamicCache

    uniq, src = _dedup(seqs, share)
    ids, mask = _left_pad(uniq, pad_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{_cache_kw(): cache},
                **_last_logits_kw())
    last = out.logits[:, -1, :]
    if len(uniq) < len(seqs):
        rows = torch.tensor(src, dtype=torch.long, device=device)
        cache.batch_select_indices(rows)  # every row gets its own copy of its prompt's keys and values
        last, mask, pos = last[rows], mask[rows], pos[rows]
    return cache, last, mask, pos


@torch.no_grad()
def _sample_batch(model, prompts, *, max_new_tokens: int, stop_ids: frozenset[int], greedy: bool,
                  temperature: float, banned_ids: Sequence[int], pad_id: int, generator, share: bool = True
                  ) -> list[Sample]:
    device = _device(model)
    n = len(prompts)
    cache, last, mask, pos = _prefill(model, prompts, pad_id, device, share)
    cache_kw = {_cache_kw(): cache}
    next_pos = pos[:, -1:] + 1
    tokens = [[] for _ in range(n)]
    logps = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device) if banned_ids else None
    for step in range(max_new_tokens):
        logits = (last if step == 0 else out.logits[:, -1, :]).float()
        if banned is not None:
            logits[:, banned] = float("-inf")
        if greedy:
            logp = torch.log_softmax(logits, dim=-1)
            nxt = logp.argmax(-1)
        else:
            logp = torch.log_softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        nxt_l, lp_l, done_l = nxt.tolist(), lp.tolist(), done.tolist()
        for i in range(n):
            if not done_l[i]:
                tokens[i].append(nxt_l[i])
                logps[i].append(lp_l[i])
        if stop is not None:
            done = done | torch.isin(nxt, stop)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **cache_kw)
        next_pos = next_pos + 1
    return [Sample(t, l, bool(t) and t[-1] in stop_ids) for t, l in zip(tokens, logps)]


def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: Iterable[int] = (),
           greedy: bool = False, temperature: float = 1.0, banned_ids: Sequence[int] = (), pad_id: int = 0,
           seed: int = 0, batch_size: int = 256, progress: bool = False, share: bool = True) -> list[Sample]:
    """Continue each prompt (token ids) until a stop id or `max_new_tokens`.

    Sampling is from softmax(logits / temperature) over the full vocabulary
    minus `banned_ids` (set to −inf, so the rest renormalise); each Sample's
    logprobs are under exactly that distribution: the tempered, renormalised
    proposal, not the model's own log p.  Prompts are batched by length; the
    same inputs and seed give the same samples.  With `share`, a prompt
    repeated within a batch is encoded once (see the module note).
    """
    if temperature <= 0 and not greedy:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax decoding)")
    stop_set = frozenset(int(s) for s in stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Sample | None] = [None] * len(prompts)
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="sampling", unit="batch")
    for idx in batches:
        outs = _sample_batch(model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, stop_ids=stop_set,
                             greedy=greedy, temperature=temperature, banned_ids=banned_ids, pad_id=pad_id,
                             generator=generator, share=share)
        for i, s in zip(idx, outs):
            results[i] = s
    model.train(was_training)
    return results  # type: ignore[return-value]


@torch.no_grad()
def score(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *, pad_id: int = 0,
          batch_size: int = 64, share: bool = True) -> list[list[float]]:
    """Per-token log p(continuation | context) by teacher forcing (context tokens themselves are not scored).

    With `share`, rows are grouped by context and each batch encodes its
    distinct contexts once, then runs the continuations on copies of their
    KV cache; without, every row is one padded sequence.
    """
    assert len(contexts) == len(continuations)
    device = _device(model)
    was_training = model.training
    model.eval()
    out: list[list[float] | None] = [None] * len(contexts)
    if share:
        by_ctx: dict[tuple, list[int]] = {}
        for i, c in enumerate(contexts):
            if len(c):
                by_ctx.setdefault(tuple(c), []).append(i)
        order = [i for ctx in sorted(by_ctx, key=len) for i in by_ctx[ctx]]
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            for i, lp in zip(idx, _score_shared(model, [contexts[i] for i in idx], [continuations[i] for i in idx],
                                                pad_id, device)):
                out[i] = lp
    rest = [i for i in range(len(contexts)) if out[i] is None]
    order = sorted(rest, key=lambda i: len(contexts[i]) + len(continuations[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        seqs = [list(contexts[i]) + list(continuations[i]) for i in idx]
        ids, mask = _left_pad(seqs, pad_id, device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        width = ids.shape[1]
        for row, i in enumerate(idx):
            n_cont = len(continuations[i])
            # token at absolute column c is predicted by column c-1; continuation occupies the last n_cont columns
            out[i] = logp[row, width - 1 - n_cont:].tolist() if n_cont else []
    model.train(was_training)
    return out  # type: ignore[return-value]


def _score_shared(model, contexts, continuations, pad_id: int, device) -> list[list[float]]:
    """One batch of `score` with each distinct (non-empty) context encoded once; continuations right-padded."""
    cache, last, mask, pos = _prefill(model, contexts, pad_id, device, True)
    width = max(len(c) for c in continuations)
    if width == 0:
        return [[] for _ in continuations]
    ids = torch.full((len(continuations), width), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(continuations), width), dtype=torch.long)
    for r, c in enumerate(continuations):
        if len(c):
            ids[r, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            cmask[r, :len(c)] = 1
    ids, cmask = ids.to(device), cmask.to(device)
    first = torch.log_softmax(last.float(), dim=-1).gather(-1, ids[:, :1]).squeeze(-1)  # from the context's end
    rest = None
    if width > 1:
        # right padding sits after every real token, so causal attention never lets it reach them
        cpos = pos[:, -1:] + 1 + torch.arange(width, device=device)[None, :]
        logits = model(input_ids=ids, attention_mask=torch.cat([mask, cmask], dim=1), position_ids=cpos,
                       use_cache=True, **{_cache_kw(): cache}).logits.float()
        rest = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = []
    for r, c in enumerate(continuations):
        n = len(c)
        if n == 0:
            out.append([])
        else:
            out.append([float(first[r])] + (rest[r, :n - 1].tolist() if n > 1 else []))
    return out
