"""LLM teachers: a chat-completions client against a local fake server, and a local HF model teacher.

Every server here listens on 127.0.0.1 on an ephemeral port, is started by the
test itself and is shut down when the test ends; clients use short timeouts
and no backoff, so nothing leaves the machine and each test takes well under
a second or two.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lt_utils.data import Chunk
from lt_utils.paper.llm_teacher import (PROMPTS, WRAP_STYLES, ChatAPITeacher, LocalModelTeacher, TeacherError,
                                  make_teacher, prompt_hash, render_messages, write_thoughts_resilient)
from lt_utils.teacher import OracleTeacher, ThoughtCache, write_thoughts

PROMPT_TOKENS, COMPLETION_TOKENS = 11, 3


def expected_thought(user_content: str) -> str:
    return "T:" + hashlib.md5(user_content.encode()).hexdigest()[:12]


class FakeChatServer:
    """A chat-completions endpoint whose behaviour each test sets through attributes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []          # {"body": parsed JSON, "auth": header}
        self.fail_first = 0                     # answer HTTP `fail_status` to this many requests first
        self.fail_status = 500
        self.malformed_marker: str | None = None  # a user message containing it gets a malformed reply
        self.malformed_kind = "no_choices"      # or not_json, empty, not_text, over_long, cut_off
        self.delay_s = 0.0                      # sleep before answering (concurrency / timeout tests)
        self.slow_first = 0                     # only the first k requests sleep `delay_s`
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization"),
                                            "path": self.path})
                    k = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay_s and (not server.slow_first or k <= server.slow_first):
                        time.sleep(server.delay_s)
                    if self.path != "/v1/chat/completions":
                        return self._send(404, b'{"error": "not found"}')
                    if k <= server.fail_first:
                        return self._send(server.fail_status, b'{"error": {"message": "try again"}}')
                    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
                    if server.malformed_marker and server.malformed_marker in user and \
                            server.malformed_kind in ("not_json", "no_choices"):
                        bad = b'{"choices": [{"mess' if server.malformed_kind == "not_json" else b'{"id": "x"}'
                        return self._send(200, bad)
                    if server.malformed_marker and server.malformed_marker in user:   # a well-formed bad reply
                        content, finish = {"empty": (" \n", "stop"), "not_text": (None, "stop"),
                                           "over_long": ("x" * 10_000, "stop"),
                                           "cut_off": (expected_thought(user), "length")}[server.malformed_kind]
                        reply = {"choices": [{"index": 0, "finish_reason": finish,
                                              "message": {"role": "assistant", "content": content}}]}
                        return self._send(200, json.dumps(reply).encode())
                    reply = {"choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": expected_thought(user)}}],
                             "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}}
                    self._send(200, json.dumps(reply).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away
                finally:
                    self._leave()

            def _leave(self):
                # a request stops counting as in flight when its answer starts, not when this thread ends:
                # the client may send its next request before the handler thread gets here
                with server.lock:
                    if not getattr(self, "_left", False):
                        self._left = True
                        server.in_flight -= 1

            def _send(self, status, payload):
                self._leave()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server():
    s = FakeChatServer()
    try:
        yield s
    finally:
        s.close()
    assert not s.thread.is_alive()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    key = "sk-test-secret-1234"
    monkeypatch.setenv("LT_TEST_KEY", key)
    return key


def make_chunks(n=6):
    out = []
    for i in range(n):
        prefix = "" if i == 0 else f"Problem: {i} + {i} Answer: {2 * i}.\n"
        out.append(Chunk(doc_id=f"doc-{i // 3}", index=i % 3, prefix=prefix,
                         suffix=f"Problem: {i} + 7 Answer: {i + 7}.\n"))
    return out


def api_teacher(server, **kw):
    args = dict(model="fake-mini", api_key_env="LT_TEST_KEY", backoff_s=0.0, timeout_s=5.0, max_retries=3,
                concurrency=4)
    args.update(kw)
    return ChatAPITeacher(server.base_url, **args)


def expected(chunks, kind="latent"):
    return [expected_thought(render_messages(kind, c)[-1]["content"]) for c in chunks]


# --------------------------------------------------------------------------- chat API teacher
def test_success_in_order_with_token_and_cost_tally(server):
    chunks = make_chunks(7)
    t = api_teacher(server, price_per_1k_input=1.0, price_per_1k_output=2.0)
    assert t.write(chunks) == expected(chunks)
    assert server.count == len(chunks)
    tally = t.tally()
    assert tally["requests"] == 7 and tally["retries"] == 0 and tally["failures"] == 0 and tally["succeeded"] == 7
    assert tally["prompt_tokens"] == 7 * PROMPT_TOKENS and tally["completion_tokens"] == 7 * COMPLETION_TOKENS
    assert tally["cost"] == pytest.approx(7 * PROMPT_TOKENS / 1000 * 1.0 + 7 * COMPLETION_TOKENS / 1000 * 2.0)
    assert t.write([]) == [] and server.count == 7


def test_request_content_settings_and_key_handling(server, api_key):
    chunks = make_chunks(2)
    t = api_teacher(server, temperature=0.3, max_tokens=123)
    t.write(chunks)
    by_user = {r["body"]["messages"][-1]["content"]: r for r in server.requests}
    for c in chunks:
        msgs = render_messages("latent", c)
        r = by_user[msgs[-1]["content"]]
        body = r["body"]
        assert r["path"] == "/v1/chat/completions"
        assert body["model"] == "fake-mini" and body["temperature"] == 0.3 and body["max_tokens"] == 123
        system, user = body["messages"]
        assert system == {"role": "system", "content": PROMPTS["latent"][0]}
        assert user["role"] == "user" and c.suffix in user["content"]
        assert (c.prefix in user["content"]) if c.prefix else ("N/A" in user["content"])
        assert r["auth"] == f"Bearer {api_key}"
    key = t.key()
    assert api_key not in json.dumps(key) and api_key not in json.dumps(t.tally())
    assert key["model"] == "fake-mini" and key["endpoint"] == "local" and key["temperature"] == 0.3
    assert key["max_tokens"] == 123 and key["prompt"] == "latent" and key["prompt_hash"] == prompt_hash("latent")
    # the port of a local server is not part of the key; the key does not depend on the secret either
    other = ChatAPITeacher("http://127.0.0.1:1/v1", "fake-mini", api_key_env="OTHER", temperature=0.3, max_tokens=123)
    assert other.key() == key


def test_wrap_prompts_send_the_document_without_system_prompt(server):
    chunks = [Chunk("d", 0, prefix="IGNORED PREFIX", suffix="A whole document about 3 + 4 = 7.")]
    for kind in (*WRAP_STYLES, "wrap_cot"):
        t = api_teacher(server, prompt=kind)
        assert t.write(chunks) == expected(chunks, kind)
        body = server.requests[-1]["body"]
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert chunks[0].suffix in body["messages"][0]["content"]
        assert "IGNORED PREFIX" not in body["messages"][0]["content"]
    assert len({prompt_hash(k) for k in PROMPTS}) == len(PROMPTS)
    assert "Question:" in PROMPTS["wrap_qa"][1] and "Answer:" in PROMPTS["wrap_qa"][1]


@pytest.mark.parametrize("status", [500, 429, 503])
def test_transient_errors_are_retried(server, status):
    server.fail_first, server.fail_status = 2, status
    chunks = make_chunks(3)
    t = api_teacher(server, concurrency=1, max_retries=3)
    assert t.write(chunks) == expected(chunks)
    assert server.count == 5
    tally = t.tally()
    assert tally["retries"] == 2 and tally["requests"] == 5 and tally["failures"] == 0


def test_client_error_is_not_retried(server):
    server.fail_first, server.fail_status = 100, 400
    chunk = make_chunks(1)
    with pytest.raises(TeacherError, match="HTTP 400") as e:
        api_teacher(server, max_retries=4).write(chunk)
    assert server.count == 1 and e.value.partial == {} and set(e.value.failures) == {0}


def test_timeout_is_retried(server):
    server.delay_s, server.slow_first = 1.0, 1
    chunks = make_chunks(1)
    t = api_teacher(server, timeout_s=0.2, concurrency=1)
    assert t.write(chunks) == expected(chunks)
    assert t.tally()["retries"] == 1 and server.count == 2


def test_connection_refused_gives_up_after_max_retries():
    with socket.socket() as s:  # a free port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = ChatAPITeacher(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, backoff_s=0, max_retries=2,
                       timeout_s=2)
    with pytest.raises(TeacherError, match="connection error") as e:
        t.write(make_chunks(1))
    assert "gave up after 3 attempts" in str(e.value)
    assert t.tally()["requests"] == 3 and t.tally()["failures"] == 1


@pytest.mark.parametrize("kind", ["no_choices", "not_json"])
def test_malformed_reply_keeps_finished_thoughts_and_rerun_asks_only_for_the_missing_chunk(server, tmp_path,
                                                                                            kind):
    chunks = make_chunks(5)
    bad = 3
    server.malformed_marker, server.malformed_kind = chunks[bad].suffix.strip(), kind
    t = api_teacher(server, max_retries=2)
    cache = ThoughtCache(tmp_path / "thoughts.sqlite")
    with pytest.raises(TeacherError) as e:
        write_thoughts_resilient(t, chunks, cache, batch_size=10, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "malformed reply" in msg
    assert f"doc_id={chunks[bad].doc_id} index={chunks[bad].index}" in msg
    assert set(e.value.failures) == {bad}
    # the bad chunk was tried 1 + max_retries times, every other chunk once
    assert server.count == 4 + 3 and t.tally()["retries"] == 2 and t.tally()["failures"] == 1
    # finished thoughts are in the cache
    want = expected(chunks)
    stored = cache.get_many([cache.key(t.key(), c) for c in chunks])
    assert sorted(stored.values()) == sorted(w for i, w in enumerate(want) if i != bad)
    cache.close()
    # a rerun against the healthy server, with a fresh cache handle, asks only for the missing chunk
    server.malformed_marker = None
    before = server.count
    cache = ThoughtCache(tmp_path / "thoughts.sqlite")
    assert write_thoughts(api_teacher(server), chunks, cache, progress=False) == want
    assert server.count == before + 1 and cache.hits == 4 and cache.misses == 1
    cache.close()


def test_keep_going_finishes_later_batches_before_raising(server, tmp_path):
    chunks = make_chunks(6)
    server.malformed_marker = chunks[0].suffix.strip()
    t = api_teacher(server, max_retries=0)
    cache = ThoughtCache(tmp_path / "c.sqlite")
    with pytest.raises(TeacherError, match="doc_id=doc-0 index=0"):
        write_thoughts_resilient(t, chunks, cache, batch_size=2, progress=False, keep_going=True)
    assert len(cache.get_many([cache.key(t.key(), c) for c in chunks])) == 5
    cache.close()


def test_cache_reuse_and_key_change(server, tmp_path):
    chunks = make_chunks(4)
    cache = ThoughtCache(tmp_path / "c.sqlite")
    t = api_teacher(server)
    first = write_thoughts_resilient(t, chunks, cache, progress=False)
    assert server.count == 4
    assert write_thoughts_resilient(api_teacher(server), chunks, cache, progress=False) == first
    assert server.count == 4  # identical run: nothing requested
    hotter = api_teacher(server, temperature=1.0)
    assert hotter.key() != t.key()
    assert write_thoughts_resilient(hotter, chunks, cache, progress=False) == first
    assert server.count == 8 and all(r["body"]["temperature"] == 1.0 for r in server.requests[4:])
    cache.close()


def test_concurrency_limit_is_respected(server):
    server.delay_s = 0.1
    chunks = make_chunks(9)
    t = api_teacher(server, concurrency=3)
    assert t.write(chunks) == expected(chunks)
    assert 1 < server.max_in_flight <= 3


def test_missing_key_for_remote_endpoint_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("LT_NOT_SET", raising=False)
    t = ChatAPITeacher("https://api.example.invalid/v1", "m", api_key_env="LT_NOT_SET", max_retries=0)
    assert t.key()["endpoint"] == "api.example.invalid"

    def no_network(*args, **kwargs):
        raise AssertionError("a request was attempted without a key")

    monkeypatch.setattr(t, "_request", no_network)
    with pytest.raises(TeacherError, match="LT_NOT_SET"):
        t.write(make_chunks(1))
    assert t.tally()["requests"] == 0


def test_make_teacher_and_bad_arguments(server):
    t = make_teacher("api", base_url=server.base_url, model="fake-mini", api_key_env="LT_TEST_KEY")
    assert isinstance(t, ChatAPITeacher) and t.key()["temperature"] == 0.7 and t.key()["max_tokens"] == 6000
    assert isinstance(make_teacher("oracle"), OracleTeacher)
    with pytest.raises(ValueError, match="unknown teacher"):
        make_teacher("nope")
    with pytest.raises(ValueError, match="unknown prompt kind"):
        make_teacher("api", base_url=server.base_url, model="m", prompt="nope")
    assert server.count == 0


# --------------------------------------------------------------------------- local model teacher
def test_local_model_teacher_is_deterministic_for_a_seed(tiny_model, tokenizer):
    chunks = make_chunks(3)
    t = make_teacher("local", model=tiny_model, tokenizer=tokenizer, max_new_tokens=8, temperature=1.0, seed=0,
                     fingerprint="tiny-test")
    assert isinstance(t, LocalModelTeacher)
    out = t.write(chunks)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert any(out)
    assert t.write(chunks) == out
    # every reply is counted; a random tiny model rarely stops within 8 tokens, so cut-off ones are the norm
    tally = t.tally()
    assert tally["replies"] == 6 and tally["empty"] == 2 * sum(not s for s in out)
    assert 0 < tally["truncated"] <= 6
    other = LocalModelTeacher(tiny_model, tokenizer, max_new_tokens=8, temperature=1.0, seed=1,
                              fingerprint="tiny-test")
    assert other.write(chunks) != out and other.key() != t.key()
    key = t.key()
    assert key["model"] == "tiny-test" and key["temperature"] == 1.0 and key["max_new_tokens"] == 8
    # without a chat template the prompt is the plain rendering, starting with BOS
    ids = t.prompt_ids(chunks[1])
    assert ids[0] == tokenizer.bos_token_id
    assert chunks[1].suffix in tokenizer.decode(ids, skip_special_tokens=True)


def test_local_model_teacher_uses_chat_template_and_weight_fingerprint(tiny_model, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    t = LocalModelTeacher(tiny_model, tok, max_new_tokens=4, temperature=0.0)
    chunk = make_chunks(2)[1]
    ids = t.prompt_ids(chunk)
    text = tok.decode(ids)
    assert text.startswith("[system] ") and "[user] " in text and text.endswith("[assistant] ")
    assert len(t.write([chunk])) == 1
    # the default fingerprint hashes the weights: a changed model gets a new key
    key = t.key()
    assert key["chat_template"] is not None
    import torch

    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    assert LocalModelTeacher(tiny_model, tok, max_new_tokens=4, temperature=0.0).key() != key


@pytest.mark.parametrize("kind", ["empty", "not_text", "over_long"])
def test_unusable_replies_are_refused_counted_and_asked_again(server, kind):
    chunks = make_chunks(3)
    server.malformed_marker, server.malformed_kind = chunks[1].suffix.strip(), kind
    t = api_teacher(server, max_retries=2, max_tokens=100)   # over-long: more than 16 x 100 characters
    with pytest.raises(TeacherError) as e:
        t.write(chunks)
    assert "\n" not in str(e.value) and "malformed reply" in str(e.value) and set(e.value.failures) == {1}
    assert e.value.partial == {0: expected(chunks)[0], 2: expected(chunks)[2]}   # the others are kept
    tally = t.tally()
    assert tally[f"rejected_{kind}"] == 3 and tally["failures"] == 1 and tally["succeeded"] == 2
    assert sum(v for k, v in tally.items() if k.startswith("rejected_")) == 3


def test_cut_off_replies_are_kept_and_counted(server):
    chunks = make_chunks(3)
    server.malformed_marker, server.malformed_kind = chunks[2].suffix.strip(), "cut_off"
    t = api_teacher(server)
    assert t.write(chunks) == expected(chunks)
    assert t.tally()["truncated"] == 1 and t.tally()["succeeded"] == 3
