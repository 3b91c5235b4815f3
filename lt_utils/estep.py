"""The E-step of BoLT: sample latent thoughts from the model's own posterior and pick one by importance resampling.

One network plays three roles, selected by special tokens (Ruan et al. 2025;
§3 and §5 of our method notes):

* posterior q(z | x, prefix):  ``BOS prefix SoL EoL x SoL POST`` → z ``EoL``
* prior and likelihood p(z, x | prefix):  ``BOS prefix`` → ``SoL PRI z EoL x``

For every chunk x of a fixed corpus, with the current model:

1. **Proposal.**  K thoughts are sampled from q at ``temperature`` (1.0 = the
   model's own posterior) with no top-k/top-p truncation, stopping at EoL or
   at ``max_thought_tokens``.  log q(z|x) is the sum of the sampled tokens'
   log-probs *including* the EoL that stopped it; z is the sampled tokens
   without that EoL.  log q is always the density of the distribution actually
   sampled: at temperature T it is log softmax(logits / T), and with
   ``ban_special_in_thought`` the special tokens other than EoL are set to
   −inf and the rest renormalised.  Self-normalised importance weights are
   valid for any proposal whose density is known, so a tempered or banned
   proposal (an ablation beyond the paper) still targets p(z | x, prefix).
2. **Joint score.**  log p(SoL, PRI, z, EoL, x | prefix) by teacher forcing;
   the prefix is context only, the delimiters are scored.
3. **Weights.**  log w = log p − log q (no length normalisation).  One
   candidate is drawn with probability proportional to w (self-normalised
   importance *resampling*, not argmax), from a numpy Generator seeded by a
   stable hash of (seed, doc_id, chunk index).  A candidate that ran into the
   cap without EoL is not a complete thought: it gets weight 0 whenever some
   candidate terminated; when none did, the one with the largest log w is
   taken and the chunk is flagged (``no_terminated``).
4. **Bound.**  ``elbo_n = logsumexp(log w[:n]) − log n`` (the IWAE bound on
   log p(x | prefix)) for n = 1, 2, 4, … ≤ K, with unterminated candidates at
   w = 0 (they are outside the support of a thought), so ``elbo_n`` is −inf
   when none of the first n terminated.

Paired K ablation
-----------------
:func:`select_first_k` re-selects a chunk's thought from its first k
candidates only, with the same selection stream, so one E-step at K = 8 gives
the K ∈ {1, 2, 4, 8} conditions on *the same* samples (k = 1 is "no
selection": the first sample).  ``select_first_k(r, K, cfg.seed)`` equals the
record's own ``selected``.

Cost
----
Per chunk the E-step runs K proposal rollouts (the bulk of the cost: up to
``max_thought_tokens`` sequential forward steps over a batch of
``batch_chunks × K`` rows, each step attending over prompt + thought) and K
teacher-forced passes over prefix + thought + suffix (one forward each,
batched ``score_batch_size`` rows at a time).  At paper scale (K = 4) that is
about 4× the selected thought tokens generated and 4× (thought + context)
tokens scored per iteration.  Rows are grouped as ``batch_chunks`` chunks × K
copies of each prompt; each prompt is encoded once and its K rows read that
one copy of its keys, and each ``BOS prefix`` is encoded once for its K
joint scores (`lt_utils.sample`; the rows and random streams are those of
the unshared computation).  On CPU the E-step runs as many lanes as torch
has threads, one thread each (the stage gives it every core with
``workers: 0``), fed as a pipeline: a group's sampling, then each of its
scoring batches, is one task, and a lane takes the next task as soon as it is
free, so no lane waits at a barrier for another.  A group's results do not
depend on the lanes (its scoring batches are those `score` forms).

Determinism, cache, resume, shards
----------------------------------
Chunks are sampled in *fixed groups*: the canonical chunk list is cut into
consecutive groups of ``batch_chunks``, each group is one sampling call
seeded from a stable hash of (seed, the (doc_id, chunk index, candidate
index) of every row it samples), and shards take whole groups (group g →
shard g mod num_shards).  Within a call, :func:`lt_utils.sample.sample`
gives row i its own random stream, seeded by (the call's seed, i), so a
row's draws do not depend on how the sampler batches, buckets or drops rows;
a group's composition depends only on the chunk list and the configuration,
never on sharding, order or resumption.  Scoring runs over the same groups,
so even the float noise of padding is identical.  (Before the per-row
streams, every row of a call drew from one torch Generator through
``torch.multinomial``; the same seeds now draw other candidates than the
studies committed before that change.)

Every candidate is written to SQLite as soon as its group is sampled
(committed per group), then its log p once scored.  The key hashes the model
fingerprint (a hash of the checkpoint's weights, or any string the caller
passes), the posterior prompt's token ids, the sampling settings
(temperature, cap, stop id, seed), the chunk's (doc_id, index) and the
candidate index.  A killed run, restarted, finds whole groups either saved or
absent, regenerates only the absent ones with the same seeds and makes the
same selections.  ``batch_chunks`` is not in the key: a rerun with another
batch size reuses every saved candidate.  Identical results assume the same
hardware and thread settings (float reductions may differ across them).
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from lt_utils.runtime import faults
from lt_utils.data import Chunk
from lt_utils.runtime.runs import read_jsonl, write_jsonl
from lt_utils.sample import sample, score, score_order
from lt_utils.runtime.sqlite_store import open_cache
from lt_utils.tokens import SpecialIds, encode


SELECTIONS = ("resample", "argmax")


@dataclass(frozen=True)
class EStepConfig:
    k: int = 4                    # Monte Carlo samples per chunk
    max_thought_tokens: int = 64  # cap on a sampled thought (EoL not counted)
    temperature: float = 1.0      # proposal temperature (1.0 = the model's own posterior)
    seed: int = 0
    batch_chunks: int = 64        # chunks per sampling call (rows = batch_chunks × k)
    score_batch_size: int = 64    # rows per teacher-forced scoring forward
    max_prefix_tokens: int = 0    # keep only the last n prefix tokens (0 = all)
    ban_special_in_thought: bool = False  # no special token but the closing EoL inside a sampled thought
    selection: str = "resample"   # resample ∝ w (BoLT); "argmax": the largest log w (an ablation beyond the paper)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.max_thought_tokens < 1:
            raise ValueError(f"max_thought_tokens must be >= 1, got {self.max_thought_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_chunks < 1 or self.score_batch_size < 1:
            raise ValueError("batch_chunks and score_batch_size must be >= 1")
        if self.max_prefix_tokens < 0:
            raise ValueError("max_prefix_tokens must be >= 0")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")


# --------------------------------------------------------------------------- seeds and fingerprints
def stable_seed(*parts) -> int:
    """A 63-bit seed from JSON-serialisable parts (sha256: the same on every machine and run)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def model_fingerprint(model_or_path) -> str:
    """sha256 of a checkpoint's weights: the bytes of its ``*.safetensors`` files, or of an in-memory model's tensors."""
    h = hashlib.sha256()
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()
    for name, t in model_or_path.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- layouts
def _ids(tokenizer_or_ids) -> SpecialIds:
    return tokenizer_or_ids if isinstance(tokenizer_or_ids, SpecialIds) else SpecialIds.of(tokenizer_or_ids)


def chunk_pieces(tokenizer, chunk: Chunk, max_prefix_tokens: int = 0) -> tuple[list[int], list[int]]:
    """Token ids of the chunk's prefix (its `prefix_ids` where set; left-truncated to `max_prefix_tokens` if > 0)
    and suffix."""
    if chunk.prefix_ids is not None:
        prefix = list(chunk.prefix_ids)
    else:
        prefix = encode(tokenizer, chunk.prefix) if chunk.prefix else []
    if max_prefix_tokens and len(prefix) > max_prefix_tokens:
        prefix = prefix[-max_prefix_tokens:]
    return prefix, encode(tokenizer, chunk.suffix)


def posterior_prompt_ids(ids: SpecialIds, prefix: Sequence[int], suffix: Sequence[int]) -> list[int]:
    """``BOS prefix SoL EoL x SoL POST``.

    Our training layout puts the empty ``SoL EoL`` before every chunk's text,
    so it is used for every chunk, the first included.  (The official code
    omits it for the first chunk, prompting ``x SoL POST`` there.)
    """
    return [ids.bos, *prefix, ids.sol, ids.eol, *suffix, ids.sol, ids.posterior]


def joint_ids(ids: SpecialIds, prefix: Sequence[int], thought: Sequence[int], suffix: Sequence[int]
              ) -> tuple[list[int], list[int]]:
    """(context, continuation) for log p(z, x | prefix): ``BOS prefix`` | ``SoL PRI z EoL x``."""
    return [ids.bos, *prefix], [ids.sol, ids.prior, *thought, ids.eol, *suffix]


def prior_prompt_ids(ids: SpecialIds, prefix: Sequence[int]) -> list[int]:
    """``BOS prefix SoL PRI``: a thought drawn from the prior, before the chunk is seen."""
    return [ids.bos, *prefix, ids.sol, ids.prior]


def thought_banned_ids(tokenizer, ids: SpecialIds | None = None) -> list[int]:
    """Every special token id except EoL (which closes a thought): what `ban_special_in_thought` masks."""
    ids = ids or SpecialIds.of(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {ids.bos, ids.eos, ids.pad, ids.sol, ids.prior, ids.posterior}
    return sorted(special - {ids.eol})


def posterior_prompt(tokenizer, chunk: Chunk, *, max_prefix_tokens: int = 0) -> list[int]:
    """Token ids of the posterior prompt for `chunk` (see :func:`posterior_prompt_ids`)."""
    prefix, suffix = chunk_pieces(tokenizer, chunk, max_prefix_tokens)
    return posterior_prompt_ids(SpecialIds.of(tokenizer), prefix, suffix)


def joint_continuation(tokenizer, chunk: Chunk, thought_ids: Sequence[int], *, max_prefix_tokens: int = 0
                       ) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) whose teacher-forced continuation log-prob is log p(z, x | prefix)."""
    prefix, suffix = chunk_pieces(tokenizer, chunk, max_prefix_tokens)
    return joint_ids(SpecialIds.of(tokenizer), prefix, thought_ids, suffix)


# --------------------------------------------------------------------------- weights, selection, bounds
def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x)) if len(x) else -math.inf
    if m == -math.inf:
        return -math.inf
    return m + math.log(float(np.sum(np.exp(x - m))))


def iwae_bounds(log_w: Sequence[float]) -> dict[int, float]:
    """``{n: logsumexp(log_w[:n]) − log n}`` for n = 1, 2, 4, … ≤ len(log_w)."""
    lw = np.asarray(list(log_w), dtype=np.float64)
    out: dict[int, float] = {}
    n = 1
    while n <= len(lw):
        out[n] = _logsumexp(lw[:n]) - math.log(n)
        n *= 2
    return out


def effective_log_weights(log_w: Sequence[float], terminated: Sequence[bool]) -> np.ndarray:
    """log w with unterminated candidates at −inf (weight 0) when at least one candidate terminated."""
    lw = np.asarray(list(log_w), dtype=np.float64)
    term = np.asarray(list(terminated), dtype=bool)
    if term.any():
        lw = np.where(term, lw, -np.inf)
    return lw


def normalized_weights(log_w: Sequence[float], terminated: Sequence[bool]) -> np.ndarray:
    """Self-normalised importance weights (0 for unterminated candidates when any terminated)."""
    lw = effective_log_weights(log_w, terminated)
    w = np.exp(lw - np.max(lw))
    return w / w.sum()


def _selection_rng(seed: int, doc_id: str, index: int) -> np.random.Generator:
    return np.random.default_rng(stable_seed("select", int(seed), str(doc_id), int(index)))


def resample_index(log_w: Sequence[float], terminated: Sequence[bool], rng: np.random.Generator) -> int:
    """Draw one index with probability ∝ w (one uniform, inverse CDF); argmax of log w if none terminated.

    One uniform per draw means different k on the same chunk share their
    random number (common random numbers for the paired K ablation).
    """
    term = list(terminated)
    if len(term) == 0:
        raise ValueError("no candidates to select from")
    if not any(term):
        return int(np.argmax(np.asarray(list(log_w), dtype=np.float64)))
    w = normalized_weights(log_w, term)
    u = rng.random()
    idx = int(np.searchsorted(np.cumsum(w), u, side="right"))
    idx = min(idx, len(w) - 1)
    while w[idx] == 0:  # u at the very top of the CDF, past float rounding: step back to a real candidate
        idx -= 1
    return idx


def select_index(log_w: Sequence[float], terminated: Sequence[bool], seed: int, doc_id: str, index: int,
                 selection: str = "resample") -> int:
    """The E-step's rule on one chunk's candidates: argmax of log w, or one resampling draw from the chunk's own
    stream (seeded by seed, doc_id, chunk index)."""
    if selection == "argmax":
        return int(np.argmax(effective_log_weights(log_w, terminated)))
    return resample_index(log_w, terminated, _selection_rng(seed, doc_id, index))


def select_first_k(record: Mapping, k: int, seed: int, selection: str = "resample") -> int:
    """Index of the thought selected from the record's first `k` candidates (k = 1: the first sample).

    Uses the E-step's rule and, for resampling, its stream (seeded by seed, doc_id, chunk index), so
    ``select_first_k(r, len(r["candidates"]), cfg.seed, cfg.selection) == r["selected"]``.
    """
    cands = record["candidates"]
    if not 1 <= k <= len(cands):
        raise ValueError(f"k must be in 1..{len(cands)}, got {k}")
    cands = cands[:k]
    return select_index([c["log_w"] for c in cands], [c["terminated"] for c in cands], seed, record["doc_id"],
                        record["index"], selection)


# --------------------------------------------------------------------------- cache
class CandidateCache:
    """SQLite store of sampled candidates (tokens, log q, terminated) and their joint log p.

    Rows are written when a group is sampled and updated when it is scored;
    each write is committed, so a killed run loses at most the group in flight.
    ``path=None`` keeps the store in memory (same code path, nothing persisted).  A file is opened
    through `sqlite_store.open_cache` (WAL journal; a damaged file is moved aside and rebuilt).
    """

    def __init__(self, path: str | Path | None):
        self.db = open_cache(path, "CREATE TABLE IF NOT EXISTS candidates (key TEXT PRIMARY KEY, tokens TEXT NOT NULL, "
                                   "log_q REAL NOT NULL, terminated INTEGER NOT NULL, log_p REAL)")

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for s in range(0, len(keys), 500):
            part = list(keys[s:s + 500])
            q = f"SELECT key, tokens, log_q, terminated, log_p FROM candidates WHERE key IN ({','.join('?' * len(part))})"
            for key, toks, lq, term, lp in self.db.execute(q, part):
                out[key] = {"tokens": json.loads(toks), "log_q": lq, "terminated": bool(term), "log_p": lp}
        return out

    def put_samples(self, items: dict[str, dict]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO candidates (key, tokens, log_q, terminated, log_p) VALUES (?, ?, ?, ?, NULL)",
            [(k, json.dumps(v["tokens"]), float(v["log_q"]), int(v["terminated"])) for k, v in items.items()])
        faults.hit("candidate_cache_write")
        self.db.commit()

    def put_scores(self, items: dict[str, float]) -> None:
        self.db.executemany("UPDATE candidates SET log_p = ? WHERE key = ?",
                            [(float(v), k) for k, v in items.items()])
        self.db.commit()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _candidate_key(base: str, prompt_digest: str, chunk: Chunk, j: int) -> str:
    return hashlib.sha256(json.dumps([base, prompt_digest, chunk.doc_id, chunk.index, j]).encode()).hexdigest()


# --------------------------------------------------------------------------- sharding
def shard_positions(n_chunks: int, batch_chunks: int, shard_index: int = 0, num_shards: int = 1) -> list[list[int]]:
    """The groups (lists of canonical chunk positions) a shard processes.

    Groups are consecutive runs of `batch_chunks` positions; group g belongs
    to shard g mod num_shards, so shards never split a sampling group.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} out of range for {num_shards} shards")
    groups = [list(range(s, min(s + batch_chunks, n_chunks))) for s in range(0, n_chunks, batch_chunks)]
    return [g for i, g in enumerate(groups) if i % num_shards == shard_index]


# --------------------------------------------------------------------------- the E-step
@dataclass
class _Prepared:
    chunk: Chunk
    position: int
    prefix: list[int]
    suffix: list[int]
    prompt: list[int]
    keys: list[str]


def _sample_group(model, items: list[tuple[_Prepared, int]], cfg: EStepConfig, ids: SpecialIds,
                  backend=None, banned: Sequence[int] = ()) -> list[dict]:
    """Sample the (chunk, candidate index) rows `items` in one call, seeded by their identities.

    Each prompt appears once per candidate row, in one batch, so the
    proposal is exactly that of `lt_utils.sample` (which encodes a repeated
    prompt once for all its rows; `make bench` prints the E-step's speed next
    to bare sampling and the model's forward).
    """
    seed = stable_seed("sample", int(cfg.seed), [[p.chunk.doc_id, p.chunk.index, j] for p, j in items])
    sampler = backend.sample if backend is not None else (lambda prompts, **kw: sample(model, prompts, **kw))
    outs = sampler([p.prompt for p, _ in items], max_new_tokens=cfg.max_thought_tokens, stop_ids=[ids.eol],
                   temperature=cfg.temperature, banned_ids=list(banned), pad_id=ids.pad, seed=seed,
                   batch_size=max(1, len(items)))
    rows = []
    for s in outs:
        toks = list(s.tokens[:-1]) if s.finished else list(s.tokens)  # z without the EoL that stopped it
        rows.append({"tokens": toks, "log_q": float(sum(s.logprobs)), "terminated": bool(s.finished)})
    return rows


def _record(p: _Prepared, rows: list[dict], tokenizer, cfg: EStepConfig) -> dict:
    cands = []
    for row in rows:
        cands.append({
            "text": tokenizer.decode(row["tokens"], skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "tokens": list(row["tokens"]),
            "n_tokens": len(row["tokens"]),
            "log_q": float(row["log_q"]),
            "log_p": float(row["log_p"]),
            "log_w": float(row["log_p"]) - float(row["log_q"]),
            "terminated": bool(row["terminated"]),
        })
    log_w = [c["log_w"] for c in cands]
    term = [c["terminated"] for c in cands]
    w = normalized_weights(log_w, term)
    # resampling ∝ w (BoLT), or the verifier-free argmax ablation: the mode of the weights, unterminated excluded
    sel = select_first_k({"candidates": [{"log_w": a, "terminated": b} for a, b in zip(log_w, term)],
                          "doc_id": p.chunk.doc_id, "index": p.chunk.index}, len(cands), cfg.seed, cfg.selection)
    # an unterminated candidate is not a thought at all: w = 0 in the bound (even when none terminated)
    elbo = iwae_bounds(np.where(term, log_w, -np.inf))
    return {
        "position": p.position,
        "doc_id": p.chunk.doc_id,
        "index": p.chunk.index,
        "n_prefix_tokens": len(p.prefix),
        "n_suffix_tokens": len(p.suffix),
        "candidates": cands,
        "selected": int(sel),
        "thought": cands[sel]["text"],
        "weights": [float(x) for x in w],
        "ess": float(1.0 / np.sum(w ** 2)),
        "n_unterminated": int(sum(not t for t in term)),
        "no_terminated": not any(term),
        "elbo": {str(n): float(v) for n, v in elbo.items()},
    }


def run_estep(model, tokenizer, chunks: Sequence[Chunk], cfg: EStepConfig, *, cache_path: str | Path | None = None,
              model_key: str = "", shard_index: int = 0, num_shards: int = 1, progress: bool = True,
              backend=None) -> list[dict]:
    """Sample, score and select a thought for this shard's chunks; returns their records in canonical order.

    `chunks` is the full canonical chunk list (the same for every shard);
    `model_key` identifies the weights in the cache (default: a hash of the
    model's tensors, see :func:`model_fingerprint`).  Each record holds the
    chunk's canonical `position`, doc_id, index, all K candidates (text,
    tokens, n_tokens, log_q, log_p, log_w, terminated), `selected`, the
    selected `thought`, normalised `weights`, `ess`, `n_unterminated`,
    `no_terminated` and `elbo` ({"1": …, "2": …, "4": …}).

    `backend` (default: this process's transformers model through
    `lt_utils.sample`) is any object with that module's `sample` and `score`
    signatures minus the model, e.g. `lt_utils.paper.vllm_backend.VLLMBackend`;
    `model` is then unused and the cache key also names the backend, whose
    random streams differ from ours.
    """
    ids = SpecialIds.of(tokenizer)
    groups = shard_positions(len(chunks), cfg.batch_chunks, shard_index, num_shards)
    key = model_key or (backend.model_key if backend is not None else model_fingerprint(model))
    settings = {"model": key, "temperature": float(cfg.temperature), "max_thought_tokens": cfg.max_thought_tokens,
                "stop": ids.eol, "seed": int(cfg.seed), "layout": "posterior-v1"}
    if backend is not None:
        settings["backend"] = backend.name
    banned = thought_banned_ids(tokenizer, ids) if cfg.ban_special_in_thought else []
    if banned:  # another proposal: never reuse unbanned samples (and keep the keys of unbanned runs as they were)
        settings["banned"] = banned
    base = json.dumps(settings, sort_keys=True)
    cache = CandidateCache(cache_path)
    records: list[dict] = []
    bar = None
    if progress and groups:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups), desc=f"E-step shard {shard_index}/{num_shards}", unit="group")
    # On CPU, lanes of one torch thread each, as many as torch was given threads: the model is too small for torch
    # to split its operations across threads (each small operation would pay a fork and join, and stall whenever
    # another process holds a core).  The main thread alone touches the cache, in the order tasks finish.
    on_cpu = backend is None and next(model.parameters()).device.type == "cpu"
    lanes = max(1, torch.get_num_threads()) if on_cpu else 1   # a GPU runs one group at a time
    threads_before = torch.get_num_threads()
    pool = None
    if lanes > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(lanes)
        torch.set_num_threads(1)
    scorer = backend.score if backend is not None else (lambda a, b, **kw: score(model, a, b, **kw))

    def prepare(group):
        prepared = []
        for pos in group:
            c = chunks[pos]
            prefix, suffix = chunk_pieces(tokenizer, c, cfg.max_prefix_tokens)
            prompt = posterior_prompt_ids(ids, prefix, suffix)
            digest = hashlib.sha256(json.dumps(prompt).encode()).hexdigest()
            prepared.append(_Prepared(c, pos, prefix, suffix, prompt,
                                      [_candidate_key(base, digest, c, j) for j in range(cfg.k)]))
        return prepared, cache.get_many([k for p in prepared for k in p.keys])

    def joint_pairs(found, rows):
        return [joint_ids(ids, p.prefix, found[p.keys[j]]["tokens"], p.suffix) for p, j in rows]

    def score_rows(pairs):
        return scorer([a for a, _ in pairs], [b for _, b in pairs], pad_id=ids.pad, batch_size=cfg.score_batch_size)

    submit = pool.submit if pool is not None else _run_now
    # groups in flight: with lanes, twice their number, so a lane never waits for another lane's group; without,
    # one, so each group's samples are saved before the next group is sampled
    window = 2 * lanes if pool is not None else 1
    state: dict[int, tuple] = {}              # group index -> (prepared, found)
    scoring: dict[int, int] = {}              # group index -> its score tasks still running (0: the group is done)
    running: dict = {}                        # future -> (group index, "sample" | "score", its rows)
    next_group = next_record = 0
    failure: BaseException | None = None

    def start_scoring(g):
        """Score a group's unscored rows: with lanes, one task per scoring batch (the batches `score` itself would
        form, so the scores are the same), which lets the lanes share a group's scoring and finish together."""
        prepared, found = state[g]
        rows = [(p, j) for p in prepared for j in range(cfg.k) if found[p.keys[j]]["log_p"] is None]
        pairs = joint_pairs(found, rows)
        if pool is None or not rows:
            parts = [list(range(len(rows)))] if rows else []
        else:
            order = score_order([a for a, _ in pairs], [b for _, b in pairs])
            parts = [order[a:a + cfg.score_batch_size] for a in range(0, len(order), cfg.score_batch_size)]
        scoring[g] = len(parts)
        for part in parts:
            running[submit(score_rows, [pairs[i] for i in part])] = (g, "score", [rows[i] for i in part])

    try:
        while next_record < len(groups):
            while failure is None and next_group < len(groups) and next_group - next_record < window:
                prepared, found = prepare(groups[next_group])
                state[next_group] = (prepared, found)
                todo = [(p, j) for p in prepared for j in range(cfg.k) if p.keys[j] not in found]
                if todo:
                    running[submit(_sample_group, model, todo, cfg, ids, backend, banned)] = (next_group, "sample",
                                                                                               todo)
                else:
                    start_scoring(next_group)
                next_group += 1
            if running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                # those that finished together, taken in canonical order (group, then sampling before scoring)
                for fut in sorted(finished, key=lambda f: running[f][:2]):
                    g, kind, rows = running.pop(fut)
                    if fut.exception() is not None:
                        failure = failure or fut.exception()
                        continue
                    prepared, found = state[g]
                    if kind == "sample":   # 1. proposal saved at once, then scored
                        new = dict(zip((p.keys[j] for p, j in rows), fut.result()))
                        faults.hit("estep_sample")
                        cache.put_samples(new)
                        for k, v in new.items():
                            found.setdefault(k, {**v, "log_p": None})
                        if failure is None:
                            start_scoring(g)
                    else:                  # 2. joint scores saved
                        scores = {p.keys[j]: float(sum(lp)) for (p, j), lp in zip(rows, fut.result())}
                        faults.hit("estep_score")
                        cache.put_scores(scores)
                        for k, v in scores.items():
                            found[k]["log_p"] = v
                        scoring[g] -= 1
            if failure is not None:
                if running:    # let the other lanes finish, so their work is saved, then stop
                    continue
                raise failure
            while scoring.get(next_record) == 0:    # 3. weights and selection, in canonical order
                del scoring[next_record]
                prepared, found = state.pop(next_record)
                for p in prepared:
                    records.append(_record(p, [found[k] for k in p.keys], tokenizer, cfg))
                next_record += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads_before)
        if bar is not None:
            bar.close()
        cache.close()
    return records


def _run_now(fn, *args) -> Future:
    """A finished future of fn(*args): the pipeline's one code path without a thread pool."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as exc:   # reported where a lane's failure would be
        fut.set_exception(exc)
    return fut


def sample_prior(model, tokenizer, chunks: Sequence[Chunk], cfg: EStepConfig, *, backend=None) -> list[dict]:
    """One thought per chunk from the prior ``BOS prefix SoL PRI`` (the chunk unseen), with the E-step's settings.

    A reference for the posterior: how good are thoughts written without
    looking at x?  Returns per chunk {tokens, text, log_q, terminated}.
    """
    if not chunks:
        return []
    ids = SpecialIds.of(tokenizer)
    prompts = [prior_prompt_ids(ids, chunk_pieces(tokenizer, c, cfg.max_prefix_tokens)[0]) for c in chunks]
    banned = thought_banned_ids(tokenizer, ids) if cfg.ban_special_in_thought else []
    sampler = backend.sample if backend is not None else (lambda p, **kw: sample(model, p, **kw))
    seed = stable_seed("prior", int(cfg.seed), [[c.doc_id, c.index] for c in chunks])
    outs = sampler(prompts, max_new_tokens=cfg.max_thought_tokens, stop_ids=[ids.eol], temperature=cfg.temperature,
                   banned_ids=banned, pad_id=ids.pad, seed=seed, batch_size=max(1, cfg.batch_chunks * cfg.k))
    rows = []
    for s_ in outs:
        toks = list(s_.tokens[:-1]) if s_.finished else list(s_.tokens)
        rows.append({"tokens": toks, "log_q": float(sum(s_.logprobs)), "terminated": bool(s_.finished),
                     "text": tokenizer.decode(toks, skip_special_tokens=False, clean_up_tokenization_spaces=False)})
    return rows


def direct_log_px(model, tokenizer, chunks: Sequence[Chunk], cfg: EStepConfig, *, backend=None) -> list[float]:
    """log p(x | BOS prefix SoL EoL) per chunk: the chunk's likelihood with no thought, beside its ELBO.

    The empty ``SoL EoL`` is how training lays out a chunk whose thought comes
    after it, so this is the model's own likelihood of the raw text; the
    marker tokens are context, not scored.
    """
    if not chunks:
        return []
    ids = SpecialIds.of(tokenizer)
    pieces = [chunk_pieces(tokenizer, c, cfg.max_prefix_tokens) for c in chunks]
    scorer = backend.score if backend is not None else (lambda a, b, **kw: score(model, a, b, **kw))
    lps = scorer([[ids.bos, *pre, ids.sol, ids.eol] for pre, _ in pieces], [suf for _, suf in pieces],
                 pad_id=ids.pad, batch_size=cfg.score_batch_size)
    return [float(sum(lp)) for lp in lps]


# --------------------------------------------------------------------------- after the E-step
def save_records(path: str | Path, records: Sequence[dict]) -> Path:
    """Write records as jsonl atomically (−inf bounds are written as -Infinity, which json reads back)."""
    return write_jsonl(path, list(records))


def merge_shards(record_lists: Sequence[Sequence[dict] | str | Path]) -> list[dict]:
    """Concatenate shard outputs (record lists or jsonl paths) in canonical chunk order; rejects duplicates."""
    merged: list[dict] = []
    for part in record_lists:
        merged.extend(read_jsonl(part) if isinstance(part, (str, Path)) else part)
    merged.sort(key=lambda r: r["position"])
    seen = set()
    for r in merged:
        if r["position"] in seen:
            raise ValueError(f"chunk at position {r['position']} ({r['doc_id']}, {r['index']}) appears in two shards")
        seen.add(r["position"])
    return merged


def selected_thoughts(records: Sequence[Mapping]) -> dict[tuple[str, int], str]:
    """{(doc_id, chunk index): selected thought text}."""
    return {(r["doc_id"], int(r["index"])): r["candidates"][r["selected"]]["text"] for r in records}


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def summarize(records: Sequence[Mapping], verify_fn: Callable[[Mapping, str], bool] | None = None) -> dict:
    """Diagnostics of one E-step.

    mean log w (over terminated candidates; unterminated ones never count),
    ESS, unterminated fractions, thought lengths, the IWAE bounds (mean per
    chunk and per suffix token; −inf when some chunk had no complete thought
    among its first n).  With `verify_fn(record, thought_text) -> bool` (the
    caller maps the record's doc_id/index to its question): the fraction of
    selected thoughts that verify, the paired K = 1 baseline (first
    candidate), best-of-K, and the mean log w of correct vs incorrect
    terminated candidates.
    """
    if not records:
        return {"n_chunks": 0}
    cands = [c for r in records for c in r["candidates"]]
    term = [c for c in cands if c["terminated"]]
    sel = [r["candidates"][r["selected"]] for r in records]
    n_suffix = sum(int(r.get("n_suffix_tokens", 0)) for r in records)
    ns = sorted({int(n) for r in records for n in r["elbo"]})
    elbo_sum = {n: float(sum(r["elbo"][str(n)] for r in records if str(n) in r["elbo"])) for n in ns}
    out = {
        "n_chunks": len(records),
        "k": max(len(r["candidates"]) for r in records),
        "mean_log_w": _mean([c["log_w"] for c in term]),
        "mean_log_w_selected": _mean([c["log_w"] for c in sel]),
        "mean_log_q": _mean([c["log_q"] for c in term]),
        "mean_log_p": _mean([c["log_p"] for c in term]),
        "mean_ess": _mean([r["ess"] for r in records]),
        "frac_unterminated": len([c for c in cands if not c["terminated"]]) / len(cands),
        "n_unterminated": sum(int(r["n_unterminated"]) for r in records),
        "n_chunks_no_terminated": sum(bool(r["no_terminated"]) for r in records),
        "mean_thought_tokens": _mean([c["n_tokens"] for c in sel]),
        "mean_candidate_tokens": _mean([c["n_tokens"] for c in cands]),
        "elbo_mean": {str(n): elbo_sum[n] / len(records) for n in ns},
        "elbo_per_suffix_token": {str(n): (elbo_sum[n] / n_suffix if n_suffix else None) for n in ns},
    }
    if verify_fn is not None:
        ok_sel, ok_first, ok_any, lw_ok, lw_bad, n_ok = [], [], [], [], [], 0
        for r in records:
            verdicts = [bool(verify_fn(r, c["text"])) for c in r["candidates"]]
            n_ok += sum(verdicts)
            ok_sel.append(verdicts[r["selected"]])
            ok_first.append(verdicts[0])
            ok_any.append(any(verdicts))
            for c, v in zip(r["candidates"], verdicts):
                if c["terminated"]:
                    (lw_ok if v else lw_bad).append(c["log_w"])
        out.update({
            "frac_selected_correct": _mean(ok_sel),
            "frac_first_correct": _mean(ok_first),
            "frac_any_correct": _mean(ok_any),
            "frac_candidates_correct": n_ok / len(cands),
            "mean_log_w_correct": _mean(lw_ok),
            "mean_log_w_incorrect": _mean(lw_bad),
            "n_correct_candidates": len(lw_ok),
            "n_incorrect_candidates": len(lw_bad),
        })
    return out
