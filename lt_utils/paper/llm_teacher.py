"""Language-model teachers: an OpenAI-compatible chat endpoint, or any local HF causal LM.

The paper writes one latent thought per (prefix, suffix) chunk with
GPT-4o-mini (temperature 0.7, max_tokens 6000), and builds its WRAP baselines
by asking the same model to rephrase whole documents in one of four styles
(plus a reasoning-inserting "WRAP-CoT" variant).  This module provides those
prompts (our own wording, versioned) and two teachers that fit the `Teacher`
protocol of `lt_utils.teacher` (`name`, `key()`, `write(chunks)`):

* `ChatAPITeacher` sends one chat-completions request per chunk, a bounded
  number at a time, retrying rate limits, server errors, timeouts and
  malformed replies with seeded exponential backoff, and keeps a token and
  cost tally.  When some chunks fail for good it raises `TeacherError` only
  after the whole batch is done, carrying the finished thoughts in
  `.partial`; `write_thoughts_resilient` stores those in the `ThoughtCache`
  before re-raising, so no paid-for result is lost and a rerun asks only for
  what is missing.
* `LocalModelTeacher` renders the same prompt with the tokenizer's chat
  template (or as plain text when it has none) and samples the continuation
  with `lt_utils.sample.sample`.

`make_teacher("api" | "local" | "oracle", **kwargs)` builds one by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from lt_utils.data import Chunk
from lt_utils.teacher import (OracleTeacher, Teacher, TeacherError, _batch_error, _chunk_name, _one_line,
                      write_thoughts)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- prompts
# Bump PROMPT_VERSION whenever a prompt's wording changes; the cache key also
# carries a hash of the exact text, so an edit can never reuse stale thoughts.
PROMPT_VERSION = 1

LATENT_SYSTEM = (
    "You are a careful reader who understands documents of every kind and reasons about their content "
    "thoroughly and precisely."
)

LATENT_USER = """A document has been cut into two consecutive pieces: the text that comes first, and a passage that follows it.

Text that comes first:
{prefix}

Passage:
{suffix}

Write down the thinking that would let a reader produce the passage, given only the text that comes first. This thinking must supply:
(1) the background knowledge the passage relies on but does not spell out;
(2) the reasoning behind each statement in the passage, including step-by-step derivations, calculations or logical arguments wherever they apply.

Follow these rules strictly. Write plain, short declarative sentences. Use no markdown, no headings, no bullet points and no other decoration. Never refer to "the passage", "the text that comes first", a prefix or a suffix, because your words will be used verbatim as training text. Make every sentence carry information and leave out vague filler such as "this idea is important". Concentrate on the passage and do not restate the text that comes first. Bring out the reasoning and knowledge the passage leaves implicit, with concrete logic or mathematics when possible. Output only these thoughts."""

WRAP_SIMPLE = """Rewrite the text below using only very common words and very short, simple sentences, so that a small child could follow it. Keep its meaning. Output only the rewritten text.

Text:
{document}"""

WRAP_TERSE = """Rewrite the text below for a highly learned reader: make it terse and dense, and replace ordinary words with rare, precise and sophisticated vocabulary. Keep its meaning. Output only the rewritten text.

Text:
{document}"""

WRAP_WIKI = """Rewrite the text below as clear, varied, high-quality English prose in the neutral style of an encyclopedia article such as one on Wikipedia. Keep its meaning. Output only the rewritten text.

Text:
{document}"""

WRAP_QA = """Turn the text below into a series of question-and-answer exchanges that together cover its content. Start every question with "Question:" and every answer with "Answer:". Output only the exchanges.

Text:
{document}"""

WRAP_COT = """Rewrite the text below as varied, high-quality English prose. Keep every piece of information it contains, and wherever a statement follows from reasoning, insert the detailed steps that lead to it, such as the calculations or logical arguments, worked out one at a time. Do not add a title or heading. Output only the rewritten text.

Text:
{document}"""

# kind -> (system prompt or None, user template).  WRAP prompts use no system prompt, as in the paper.
PROMPTS: dict[str, tuple[str | None, str]] = {
    "latent": (LATENT_SYSTEM, LATENT_USER),
    "wrap_simple": (None, WRAP_SIMPLE),
    "wrap_terse": (None, WRAP_TERSE),
    "wrap_wiki": (None, WRAP_WIKI),
    "wrap_qa": (None, WRAP_QA),
    "wrap_cot": (None, WRAP_COT),
}
WRAP_STYLES = ("wrap_simple", "wrap_terse", "wrap_wiki", "wrap_qa")


def _check_kind(kind: str) -> None:
    if kind not in PROMPTS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {sorted(PROMPTS)}")


def prompt_hash(kind: str) -> str:
    """Short hash of the exact prompt text of `kind` (part of every teacher key)."""
    _check_kind(kind)
    system, user = PROMPTS[kind]
    return hashlib.sha256(json.dumps([system, user]).encode()).hexdigest()[:16]


def render_messages(kind: str, chunk: Chunk) -> list[dict[str, str]]:
    """Chat messages for one chunk: the latent prompt sees prefix and suffix, WRAP prompts the suffix as a document."""
    _check_kind(kind)
    system, user = PROMPTS[kind]
    if kind == "latent":
        prefix = chunk.prefix if chunk.prefix.strip() else "N/A"
        content = user.format(prefix=prefix, suffix=chunk.suffix)
    else:
        content = user.format(document=chunk.suffix)
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": content})
    return msgs


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    """The same conversation as plain text, for a model whose tokenizer has no chat template."""
    return "\n\n".join(m["content"] for m in messages) + "\n\nResponse:\n"


# --------------------------------------------------------------------------- chat API teacher
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_RETRY_STATUS = {408, 409, 425, 429}


def endpoint_kind(base_url: str) -> str:
    """What the cache key records about the endpoint: "local" for loopback servers, else the host name."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if not host:
        raise ValueError(f"base_url has no host: {base_url!r}")
    return "local" if host in _LOCAL_HOSTS else host


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float = 0.0):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Fatal(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ChatAPITeacher:
    """One chat-completions request per chunk against an OpenAI-compatible endpoint.

    The API key is read from the environment variable `api_key_env` at call
    time and is never part of `key()`, the tally or any message.  Loopback
    endpoints (a local vLLM server) need no key and bypass proxies.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.7, max_tokens: int = 6000, max_retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, concurrency: int = 8, timeout_s: float = 60.0, prompt: str = "latent",
                 price_per_1k_input: float = 0.0, price_per_1k_output: float = 0.0,
                 extra_body: dict[str, Any] | None = None, seed: int = 0, endpoint: str | None = None,
                 max_reply_chars: int = 0):
        _check_kind(prompt)
        if concurrency < 1 or max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0, backoff_s >= 0, timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.endpoint = endpoint or endpoint_kind(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.prompt = prompt
        self.price_per_1k_input = float(price_per_1k_input)
        self.price_per_1k_output = float(price_per_1k_output)
        self.extra_body = dict(extra_body or {})
        # a reply longer than this is a runaway, not a thought (0: 16 characters per token of max_tokens)
        self.max_reply_chars = int(max_reply_chars) or 16 * self.max_tokens
        self.name = f"api:{model}"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # truncated: replies cut off at max_tokens (kept, counted); rejected_*: replies refused and asked again
        self._tally = {"requests": 0, "retries": 0, "failures": 0, "succeeded": 0, "truncated": 0,
                       "rejected_empty": 0, "rejected_not_text": 0, "rejected_over_long": 0,
                       "prompt_tokens": 0, "completion_tokens": 0}
        is_local = urllib.parse.urlsplit(base_url).hostname in _LOCAL_HOSTS
        # a loopback server must never be reached through an HTTP proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if is_local \
            else urllib.request.build_opener()
        self._is_local = is_local

    # ----------------------------------------------------------------- protocol
    def key(self) -> dict:
        return {"teacher": "chat_api", "endpoint": self.endpoint, "model": self.model, "prompt": self.prompt,
                "prompt_version": PROMPT_VERSION, "prompt_hash": prompt_hash(self.prompt),
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                **({"extra_body": self.extra_body} if self.extra_body else {})}

    def messages(self, chunk: Chunk) -> list[dict[str, str]]:
        return render_messages(self.prompt, chunk)

    def write(self, chunks: Sequence[Chunk]) -> list[str]:
        """One thought per chunk, in order; raises `TeacherError` (with `.partial`) after the batch if any failed."""
        chunks = list(chunks)
        if not chunks:
            return []
        api_key = self._api_key()
        results: dict[int, str] = {}
        failures: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks)),
                                thread_name_prefix="chat-teacher") as pool:
            futures = {pool.submit(self._complete, c, api_key): i for i, c in enumerate(chunks)}
            for fut, i in futures.items():
                ok, value = fut.result()
                (results if ok else failures)[i] = value
        if failures:
            for i in sorted(failures):
                log.warning("%s failed: %s", _chunk_name(chunks[i]), failures[i])
            raise _batch_error(chunks, results, failures)
        return [results[i] for i in range(len(chunks))]

    def tally(self) -> dict:
        """Requests, retries, failures and tokens so far, with the estimated cost in the prices' currency."""
        with self._lock:
            t = dict(self._tally)
        t["cost"] = (t["prompt_tokens"] / 1000.0 * self.price_per_1k_input
                     + t["completion_tokens"] / 1000.0 * self.price_per_1k_output)
        return t

    # ----------------------------------------------------------------- internals
    def _api_key(self) -> str | None:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key and not self._is_local:
            raise TeacherError(f"environment variable {self.api_key_env} is not set (needed for {self.endpoint})")
        return key or None

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                self._tally[k] += v

    def _delay(self, attempt: int, retry_after: float) -> float:
        if self.backoff_s <= 0:
            return 0.0
        with self._lock:
            jitter = 0.5 + self._rng.random()
        return min(self.max_backoff_s, max(retry_after, self.backoff_s * (2 ** attempt) * jitter))

    def _complete(self, chunk: Chunk, api_key: str | None) -> tuple[bool, str]:
        """(True, thought) or (False, reason) after at most 1 + max_retries attempts; never raises."""
        payload = json.dumps({"model": self.model, "messages": self.messages(chunk),
                              "temperature": self.temperature, "max_tokens": self.max_tokens,
                              **self.extra_body}).encode()
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            self._count(requests=1)
            try:
                text = self._request(payload, api_key)
            except _Retryable as e:
                reason = self._redact(e.reason, api_key)
                if attempt < self.max_retries:
                    log.debug("%s: %s; retrying (%d/%d)", _chunk_name(chunk), reason, attempt + 1, self.max_retries)
                    time.sleep(self._delay(attempt, e.retry_after))
                continue
            except _Fatal as e:
                reason = self._redact(e.reason, api_key)
                break
            except Exception as e:  # a bug must not lose the rest of the batch
                reason = self._redact(f"{type(e).__name__}: {e}", api_key)
                break
            self._count(succeeded=1)
            return True, text
        else:
            reason = f"{reason} (gave up after {self.max_retries + 1} attempts)"
        self._count(failures=1)
        return False, _one_line(reason)

    @staticmethod
    def _redact(text: str, api_key: str | None) -> str:
        text = _one_line(text)
        return text.replace(api_key, "***") if api_key else text

    def _request(self, payload: bytes, api_key: str | None) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = e.read().decode("utf-8", "replace")
            except Exception:
                detail = ""
            msg = f"HTTP {e.code}" + (f": {_one_line(detail, 200)}" if detail.strip() else "")
            if e.code in _RETRY_STATUS or e.code >= 500:
                raise _Retryable(msg, _retry_after(e.headers)) from None
            raise _Fatal(msg) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            why = getattr(e, "reason", e)
            kind = "timeout" if isinstance(why, TimeoutError) or isinstance(e, TimeoutError) else "connection error"
            raise _Retryable(f"{kind}: {_one_line(why, 200)}") from None
        except Exception as e:  # e.g. http.client.RemoteDisconnected / IncompleteRead mid-reply
            raise _Retryable(f"connection error: {type(e).__name__}: {_one_line(e, 200)}") from None
        return self._parse(body)

    def _parse(self, body: bytes) -> str:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _Retryable(f"malformed reply: not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        if not isinstance(data, dict):
            raise _Retryable("malformed reply: not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retryable("malformed reply: missing 'choices'")
        message = choices[0].get("message")
        if not isinstance(message, dict) or "content" not in message:
            raise _Retryable("malformed reply: missing 'choices[0].message.content'")
        content = message["content"]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        self._count(prompt_tokens=_int(usage.get("prompt_tokens")),
                    completion_tokens=_int(usage.get("completion_tokens")))
        if not isinstance(content, str):
            self._count(rejected_not_text=1)
            raise _Retryable(f"malformed reply: content is {type(content).__name__}, not text")
        if not content.strip():
            self._count(rejected_empty=1)
            raise _Retryable("malformed reply: empty content")
        if len(content) > self.max_reply_chars:
            self._count(rejected_over_long=1)
            raise _Retryable(f"malformed reply: {len(content)} characters, more than {self.max_reply_chars}")
        self._count(truncated=int(choices[0].get("finish_reason") == "length"))
        return content.strip()


def _int(x) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0


def _retry_after(headers) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After", 0) or 0))
    except (TypeError, ValueError, AttributeError):
        return 0.0


# --------------------------------------------------------------------------- caching driver
# `teacher.write_thoughts` stores a failing batch's finished thoughts before it re-raises; the old name stays.
write_thoughts_resilient = write_thoughts


# --------------------------------------------------------------------------- local model teacher
def _config_hash(config) -> str:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d.pop("_name_or_path", None)
    d.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """Config hash plus a hash of every weight (exact, so a retrained model never reuses cached thoughts)."""
    import torch

    h = hashlib.sha256(_config_hash(model.config).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(name.encode())
            t = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _path_fingerprint(path: str) -> str:
    """Path (or hub id) + config hash + weight-file sizes, without reading the weights."""
    p = Path(path)
    if p.is_dir():
        cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").exists() else {}
        cfg.pop("_name_or_path", None)
        cfg.pop("transformers_version", None)
        sizes = sorted((f.name, f.stat().st_size) for f in p.iterdir()
                       if f.suffix in (".safetensors", ".bin", ".pt"))
        digest = hashlib.sha256(json.dumps([cfg, sizes], sort_keys=True).encode()).hexdigest()[:16]
        return f"{p.resolve()}#{digest}"
    return str(path)


class LocalModelTeacher:
    """Samples each chunk's thought from a local HF causal LM with `lt_utils.sample.sample`.

    `model` is a path / hub id (loaded here) or an already-loaded model, in
    which case `tokenizer` is required.  `fingerprint` names the model in
    `key()`; by default it is the path plus a config hash, or for a loaded
    model a hash of its config and weights.  Sampling is untruncated at
    `temperature` (greedy when 0) and stops at EOS; the seed of each call is
    derived from `seed` and the batch's text, so the same batch gives the same
    thoughts while different batches use different random streams.
    """

    def __init__(self, model, tokenizer=None, *, prompt: str = "latent", temperature: float = 0.7,
                 max_new_tokens: int = 1024, seed: int = 0, batch_size: int = 16, fingerprint: str | None = None,
                 device: str | None = None, dtype: str | None = None, banned_ids: Sequence[int] = ()):
        _check_kind(prompt)
        if temperature < 0 or max_new_tokens < 1:
            raise ValueError("need temperature >= 0 and max_new_tokens >= 1")
        self.prompt = prompt
        self.temperature = float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.banned_ids = tuple(int(i) for i in banned_ids)
        if isinstance(model, (str, Path)):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
            fingerprint = fingerprint or f"{_path_fingerprint(str(model))}@{dtype}"
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=getattr(torch, dtype)).to(device).eval()
        elif tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        elif device is not None:
            model = model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self._fingerprint = fingerprint
        # replies written; of them cut off at max_new_tokens, and empty after decoding (both kept, counted)
        self._tally = {"replies": 0, "truncated": 0, "empty": 0}
        self.name = f"local:{getattr(model.config, 'name_or_path', '') or type(model).__name__}"

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def key(self) -> dict:
        template = getattr(self.tokenizer, "chat_template", None)
        return {"teacher": "local_model", "model": self.fingerprint, "prompt": self.prompt,
                "prompt_version": PROMPT_VERSION, "prompt_hash": prompt_hash(self.prompt),
                "chat_template": hashlib.sha256(str(template).encode()).hexdigest()[:16] if template else None,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                **({"banned_ids": list(self.banned_ids)} if self.banned_ids else {})}

    # ----------------------------------------------------------------- prompting
    def prompt_ids(self, chunk: Chunk) -> list[int]:
        """Token ids of the prompt: the chat template when the tokenizer has one, else plain text after BOS."""
        msgs = render_messages(self.prompt, chunk)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            try:
                out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
            except Exception:
                if msgs[0]["role"] != "system":
                    raise
                # some templates reject a system turn: fold it into the user turn
                merged = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}]
                out = tok.apply_chat_template(merged, add_generation_prompt=True, tokenize=True, return_dict=False)
            if hasattr(out, "keys") and "input_ids" in out:
                out = out["input_ids"]
            return [int(i) for i in out]
        ids = list(tok(render_plain(msgs), add_special_tokens=True)["input_ids"])
        bos = getattr(tok, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def _stop_ids(self) -> set[int]:
        stop = set()
        for src in (getattr(self.tokenizer, "eos_token_id", None),
                    getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                stop.add(src)
            elif isinstance(src, (list, tuple)):
                stop.update(int(s) for s in src)
        return stop

    def write(self, chunks: Sequence[Chunk]) -> list[str]:
        from lt_utils.sample import sample

        chunks = list(chunks)
        if not chunks:
            return []
        prompts = [self.prompt_ids(c) for c in chunks]
        stop = self._stop_ids()
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (min(stop) if stop else 0)
        batch_digest = hashlib.sha256(json.dumps([[c.prefix, c.suffix] for c in chunks]).encode()).hexdigest()
        seed = (self.seed + int(batch_digest[:8], 16)) & 0x7FFFFFFF
        outs = sample(self.model, prompts, max_new_tokens=self.max_new_tokens, stop_ids=stop,
                      greedy=self.temperature == 0, temperature=self.temperature or 1.0,
                      banned_ids=self.banned_ids, pad_id=pad, seed=seed, batch_size=self.batch_size)
        texts = []
        for s in outs:
            ids = s.tokens[:-1] if s.finished else s.tokens
            texts.append(tok.decode(ids, skip_special_tokens=True).strip())
            self._tally["replies"] += 1
            self._tally["truncated"] += int(not s.finished)
            self._tally["empty"] += int(not texts[-1])
        return texts

    def tally(self) -> dict:
        """Replies written so far, with how many were cut off at max_new_tokens or came out empty."""
        return dict(self._tally)


# --------------------------------------------------------------------------- factory
TEACHERS = {"api": ChatAPITeacher, "local": LocalModelTeacher, "oracle": OracleTeacher}


def make_teacher(name: str, **kwargs) -> Teacher:
    """Build a teacher by name: "api" (ChatAPITeacher), "local" (LocalModelTeacher) or "oracle"."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return TEACHERS[name](**kwargs)
