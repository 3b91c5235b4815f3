"""A Llama forward over preallocated key/value caches in which a shared prefix is stored once.

Why not transformers' own cache: for the study's model (4 layers, d = 64) a
decoding step through `LlamaForCausalLM` with its dynamic cache costs more in
bookkeeping (tensors grown by concatenation, masks rebuilt every step, many
small per-layer operations) than in arithmetic, and each row reads its own
copy of its prompt's keys.  (transformers' static cache removes the growing
tensors but not the rest.)  This module reads the model's weights (fused per
layer: q, k, v in one matrix, gate and up in one) and runs its rotary
embedding and embeddings, so only the arrangement of the computation is
ours:

* **Prefixes** hold the keys and values of distinct token sequences (a
  prompt shared by K sampled rows, a context shared by K scored
  continuations), right-padded, written once by :meth:`KVLlama.prefill`.
* **Rows** hold each row's own keys and values in tensors preallocated to the
  final width and written in place, column by column.  Every row attends to
  its prefix (masked beyond the prefix's length) and to its own valid
  columns.

A decoding step (one token per row) computes attention to a prefix as one
matrix product for all the rows that share it (rows laid out in slots
prefix × copy), so K copies of a prompt read its keys once per step instead
of K times; prefix keys are stored transposed for that product.  A step of
several tokens per row (a prompt's tail, a scored continuation) runs its
linear layers on the real tokens only, packed, and its attention with
torch's fused kernel, each row's prefix copied beside its own keys.  Padded
positions always attend to themselves, so no softmax row is empty, and
unwritten columns are zeros, so nothing non-finite reaches an output.
Finished rows are dropped with :meth:`Rows.keep`, unused prefixes with
:meth:`Prefixes.keep`.  Runs on whatever device the model is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

NEG_INF = float("-inf")
# Attention spans at least this many key columns (masked beyond the real ones): below ~25, torch's CPU batched
# matmul takes a naive per-matrix loop that costs more than the wider product.
MIN_KEYS = 32


def supports(model) -> bool:
    """True for a transformers Llama (the study's and the paper path's architecture); others use a plain forward."""
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    return (getattr(cfg, "model_type", None) == "llama" and inner is not None
            and all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))
            and hasattr(model, "lm_head"))


@dataclass
class Rows:
    """Per-row caches: keys and values (B, Hkv, S, hd) per layer, written in place."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    bias: torch.Tensor          # (B, S): 0 where a written column is a real token, −inf elsewhere
    prefix: torch.Tensor        # (B,) index of each row's prefix
    pos: torch.Tensor           # (B,) position of each row's next token
    width: int = 0              # columns written so far
    slots: "_Slots | None" = None   # the (prefix × copy) layout, rebuilt when the rows or prefixes change

    @property
    def n(self) -> int:
        return int(self.pos.shape[0])

    def keep(self, idx: torch.Tensor) -> "Rows":
        """Only rows `idx`, copied whole into fresh tensors (their unwritten columns are zeros, and stay so)."""
        return Rows([t.index_select(0, idx) for t in self.k], [t.index_select(0, idx) for t in self.v],
                    self.bias.index_select(0, idx), self.prefix.index_select(0, idx), self.pos.index_select(0, idx),
                    self.width)


@dataclass
class Prefixes:
    """Keys (P, Hkv, hd, T) and values (P, Hkv, T, hd) per layer of distinct sequences, with their padding mask."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    bias: torch.Tensor          # (P, T): 0 on real tokens, −inf on padding
    lengths: torch.Tensor       # (P,)

    @property
    def n(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        return int(self.bias.shape[1])

    def keep(self, idx: torch.Tensor) -> "Prefixes":
        return Prefixes([t.index_select(0, idx) for t in self.k], [t.index_select(0, idx) for t in self.v],
                        self.bias.index_select(0, idx), self.lengths.index_select(0, idx))


class _Slots:
    """Where each row sits in the (prefix × copy) layout that turns its prefix attention into one product."""

    def __init__(self, prefix: torch.Tensor, n_prefix: int):
        b = prefix.shape[0]
        counts = torch.bincount(prefix, minlength=n_prefix)
        self.p, self.g = n_prefix, max(1, int(counts.max())) if b else 1
        order = torch.argsort(prefix, stable=True)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(prefix)
        rank[order] = torch.arange(b, device=prefix.device) - start[prefix[order]]
        self.slot = prefix * self.g + rank
        self.identity = b == self.p * self.g and bool((self.slot == torch.arange(b, device=prefix.device)).all())
        # the row each slot reads: an empty slot repeats row 0, harmless because a product's output row depends on
        # its own input row only and empty slots are never read back (one gather instead of a fill and a scatter)
        self.source = None
        if not self.identity:
            self.source = torch.zeros(self.p * self.g, dtype=torch.long, device=prefix.device)
            self.source[self.slot] = torch.arange(b, device=prefix.device)

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, R, D) row-major → (P, Hkv, G·R, D); an empty slot holds a copy of row 0."""
        b, h, r, d = x.shape
        if not self.identity:
            x = x.index_select(0, self.source)
        return x.view(self.p, self.g, h, r, d).transpose(1, 2).reshape(self.p, h, self.g * r, d)

    def ungroup(self, y: torch.Tensor, r: int) -> torch.Tensor:
        """(P, Hkv, G·R, D) → (B, Hkv, R, D) for the rows."""
        p, h, _, d = y.shape
        y = y.view(p, h, self.g, r, d).transpose(1, 2).reshape(p * self.g, h, r, d)
        return y if self.identity else y[self.slot]


class KVLlama:
    """Cached forward passes of a transformers Llama with the model's weights (see the module note).

    The weights are read once into fused matrices (q·scale, k and v in one;
    gate and up in one), so a decoding step is a few large operations per
    layer rather than the model's many small ones: at this model size each
    operation's fixed cost, not its arithmetic, sets the step time.
    """

    def __init__(self, model):
        if not supports(model):
            raise TypeError(f"{type(model).__name__} is not a transformers Llama")
        cfg = model.config
        self.model = model
        self.inner = model.model
        attn = self.inner.layers[0].self_attn
        self.n_head = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = attn.head_dim
        self.rep = self.n_head // self.n_kv
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.layers = [_FusedLayer(layer) for layer in self.inner.layers]
        self.norm_w, self.norm_eps = self.inner.norm.weight.detach(), self.inner.norm.variance_epsilon

    # ------------------------------------------------------------------ caches
    def rows(self, prefixes: Prefixes | None, prefix_of_row: Sequence[int] | torch.Tensor, width: int) -> Rows:
        """Empty caches for rows attending to `prefixes[prefix_of_row]` (None: no prefix), `width` columns each."""
        pre = torch.as_tensor(prefix_of_row, dtype=torch.long, device=self.device)
        b = pre.shape[0]
        # zeros, not garbage: masked columns get weight exactly 0, and 0 · NaN would still be NaN
        k, v = ([torch.zeros((b, self.n_kv, width, self.head_dim), device=self.device, dtype=self.dtype)
                 for _ in self.layers] for _ in range(2))
        pos = prefixes.lengths[pre] if prefixes is not None else torch.zeros_like(pre)
        bias = torch.full((b, width), NEG_INF, device=self.device, dtype=self.dtype)
        return Rows(k, v, bias, pre, pos.clone())

    def prefill(self, seqs: Sequence[Sequence[int]], pad_id: int = 0, max_cells: int = 1 << 24) -> Prefixes:
        """Keys and values of each sequence (right-padded; empty sequences allowed), in slices of rows whose
        attention scores stay within `max_cells` elements."""
        n, longest = len(seqs), max([len(s) for s in seqs] + [0])
        width = max(longest, MIN_KEYS) if longest else 0
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=self.device)
        rows = self.rows(None, [0] * n, width)
        if longest:
            ids, valid = right_pad(seqs, pad_id, self.device)
            per = max(1, max_cells // (self.n_head * width * width))
            for a in range(0, n, per):
                part = slice(a, a + per)
                self.extend(None, Rows([t[part] for t in rows.k], [t[part] for t in rows.v], rows.bias[part],
                                       rows.prefix[part], rows.pos[part]), ids[part], valid[part])
        return Prefixes([t.transpose(2, 3).contiguous() for t in rows.k], rows.v, rows.bias, lengths)

    # ------------------------------------------------------------------ the forward
    @torch.no_grad()
    def extend(self, prefixes: Prefixes | None, rows: Rows, ids: torch.Tensor, valid: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Run tokens `ids` (B, L) (right-padded where `valid` is False) after each row's cache; returns the final
        normed hidden states (B, L, d).  Their keys and values are written at the next L columns."""
        b, n_new = ids.shape
        c0, c1 = rows.width, rows.width + n_new
        hq, hk, hd = self.n_head, self.n_kv, self.head_dim
        if valid is None:
            rows.bias[:, c0:c1] = 0.0
        else:
            rows.bias[:, c0:c1] = torch.where(valid, 0.0, NEG_INF).to(rows.bias.dtype)
        rows.width = c1
        cw = min(rows.bias.shape[1], max(c1, MIN_KEYS))                       # key columns read
        own = self._own_bias(rows.bias[:, :cw], c0, n_new, valid is None)    # (B, 1, L, cw)
        use_pre = prefixes is not None and prefixes.width > 0
        if n_new > 1:
            mask = own if not use_pre else torch.cat(
                [prefixes.bias.index_select(0, rows.prefix)[:, None, None, :].expand(b, 1, n_new, -1), own], dim=-1)
        elif use_pre:
            if rows.slots is None or rows.slots.p != prefixes.n:
                rows.slots = _Slots(rows.prefix, prefixes.n)
            slots = rows.slots
            pre_bias = prefixes.bias[:, None, None, :]                        # (P, 1, 1, T)
        pos = rows.pos[:, None] + torch.arange(n_new, device=self.device)[None, :]
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, pos)
        cos, sin = cos[:, :, None], sin[:, :, None]                           # (B, L, 1, hd)
        half = hd // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)          # rotate_half(x)·sin = roll(x)·this
        rows.pos = rows.pos + (n_new if valid is None else valid.sum(1))
        if n_new > 1:
            return self._extend_packed(prefixes if use_pre else None, rows, x, cos, sin, valid, mask, c0, c1, cw)
        for li, lay in enumerate(self.layers):
            qkv = torch.nn.functional.linear(lay.norm1(x), lay.w_qkv, lay.b_qkv).view(b, n_new, hq + 2 * hk, hd)
            qk = _rotary(qkv[:, :, :hq + hk], cos, sin)
            k, v = qk[:, :, hq:], qkv[:, :, hq + hk:]
            rows.k[li][:, :, c0:c1] = k.transpose(1, 2)
            rows.v[li][:, :, c0:c1] = v.transpose(1, 2)
            q = qk[:, :, :hq].transpose(1, 2).reshape(b, hk, self.rep, hd)    # query head h reads kv head h // rep
            s_own = torch.matmul(q, rows.k[li][:, :, :cw].transpose(2, 3)).add_(own)
            if use_pre:
                s_pre = slots.ungroup(torch.matmul(slots.group(q), prefixes.k[li]).add_(pre_bias), self.rep)
                w = torch.softmax(torch.cat([s_pre, s_own], dim=-1), dim=-1)
                t = prefixes.width
                o = torch.matmul(w[..., t:], rows.v[li][:, :, :cw])
                o += slots.ungroup(torch.matmul(slots.group(w[..., :t]), prefixes.v[li]), self.rep)
            else:
                o = torch.matmul(torch.softmax(s_own, dim=-1), rows.v[li][:, :, :cw])
            o = o.view(b, hq, n_new, hd).transpose(1, 2).reshape(b, n_new, hq * hd)
            x = x + lay.attn_out(o)
            x = x + lay.mlp(lay.norm2(x))
        return _rms(x, self.norm_w, self.norm_eps)

    def _extend_packed(self, prefixes: Prefixes | None, rows: Rows, x: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor, valid: torch.Tensor | None, mask: torch.Tensor, c0: int, c1: int, cw: int
                       ) -> torch.Tensor:
        """Several tokens per row: the linear layers run on the real tokens only, packed (padding is 27-43% of
        the positions joint scoring runs in the bench and the study), and attention on the padded layout with
        torch's fused kernel, each row's prefix copied beside its own keys.  Padded positions get zero queries,
        keys and values, which only they themselves read (masked everywhere else), so a real token's output is
        bitwise that of running every position: a row of a matrix product does not depend on the other rows."""
        b, n_new = x.shape[:2]
        hq, hk, hd = self.n_head, self.n_kv, self.head_dim
        flat = None if valid is None else valid.reshape(-1).nonzero().squeeze(1)

        def pack(t):                       # (B, L, ...) -> (N, ...), the real tokens in row-major order
            t = t.reshape(b * n_new, *t.shape[2:])
            return t if flat is None else t.index_select(0, flat)

        def unpack(t):                     # (N, ...) -> (B, L, ...), zeros at padding
            if flat is None:
                return t.view(b, n_new, *t.shape[1:])
            out = t.new_zeros((b * n_new, *t.shape[1:]))
            out.index_copy_(0, flat, t)
            return out.view(b, n_new, *t.shape[1:])

        x, cos, sin = pack(x), pack(cos), pack(sin)                           # (N, d), (N, 1, hd)
        for li, lay in enumerate(self.layers):
            qkv = torch.nn.functional.linear(lay.norm1(x), lay.w_qkv, lay.b_qkv).view(-1, hq + 2 * hk, hd)
            qk = _rotary(qkv[:, :hq + hk], cos, sin)
            qkv = unpack(torch.cat([qk, qkv[:, hq + hk:]], dim=1))            # (B, L, hq + 2hk, hd)
            rows.k[li][:, :, c0:c1] = qkv[:, :, hq:hq + hk].transpose(1, 2)
            rows.v[li][:, :, c0:c1] = qkv[:, :, hq + hk:].transpose(1, 2)
            keys, values = rows.k[li][:, :, :cw], rows.v[li][:, :, :cw]
            if prefixes is not None:
                keys = torch.cat([prefixes.k[li].index_select(0, rows.prefix).transpose(2, 3), keys], dim=2)
                values = torch.cat([prefixes.v[li].index_select(0, rows.prefix), values], dim=2)
            o = torch.nn.functional.scaled_dot_product_attention(
                qkv[:, :, :hq].transpose(1, 2), keys, values, attn_mask=mask, scale=1.0, enable_gqa=self.rep > 1)
            x = x + lay.attn_out(pack(o.transpose(1, 2)).reshape(-1, hq * hd))
            x = x + lay.mlp(lay.norm2(x))
        return unpack(_rms(x, self.norm_w, self.norm_eps))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)


    def _own_bias(self, bias: torch.Tensor, c0: int, n_new: int, all_valid: bool) -> torch.Tensor:
        """(B, 1, L, cw): a row's valid columns, causal among the new tokens, each new token seeing itself (so a
        padded position never has an empty softmax)."""
        if n_new == 1 and all_valid:   # a decoding step: the new column is already valid
            return bias[:, None, None, :]
        if n_new == 1:
            out = bias.clone()
            out[:, c0] = 0.0
            return out[:, None, None, :]
        col = torch.arange(bias.shape[1], device=self.device)
        qcol = c0 + torch.arange(n_new, device=self.device)
        out = torch.where((col[None, :] <= qcol[:, None])[None], bias[:, None, :], NEG_INF)
        out[:, torch.arange(n_new, device=self.device), qcol] = 0.0
        return out[:, None]


class _FusedLayer:
    """One decoder layer's weights, fused for few large operations; the query rows carry the attention scale."""

    def __init__(self, layer):
        a, m = layer.self_attn, layer.mlp
        w = [a.q_proj.weight * a.scaling, a.k_proj.weight, a.v_proj.weight]
        self.w_qkv = torch.cat(w).detach()
        self.b_qkv = (torch.cat([a.q_proj.bias * a.scaling, a.k_proj.bias, a.v_proj.bias]).detach()
                      if a.q_proj.bias is not None else None)
        self.w_o, self.b_o = a.o_proj.weight.detach(), _bias(a.o_proj)
        self.w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()
        self.b_gu = torch.cat([m.gate_proj.bias, m.up_proj.bias]).detach() if m.gate_proj.bias is not None else None
        self.w_down, self.b_down = m.down_proj.weight.detach(), _bias(m.down_proj)
        self.act, self.ffn = m.act_fn, m.gate_proj.weight.shape[0]
        self.n1 = (layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon)
        self.n2 = (layer.post_attention_layernorm.weight.detach(), layer.post_attention_layernorm.variance_epsilon)

    def norm1(self, x):
        return _rms(x, *self.n1)

    def norm2(self, x):
        return _rms(x, *self.n2)

    def attn_out(self, o):
        return torch.nn.functional.linear(o, self.w_o, self.b_o)

    def mlp(self, x):
        gu = torch.nn.functional.linear(x, self.w_gu, self.b_gu)
        return torch.nn.functional.linear(self.act(gu[..., :self.ffn]) * gu[..., self.ffn:], self.w_down, self.b_down)


def _bias(linear):
    return linear.bias.detach() if linear.bias is not None else None


def _rotary(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding of queries and keys at once (`sin` carries rotate_half's sign, see `extend`)."""
    return torch.addcmul(qk * cos, torch.roll(qk, qk.shape[-1] // 2, dims=-1), sin)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalised in float32, scaled by the weight in the input's dtype (one fused
    operation for a float32 model)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, valid) of the sequences right-padded to the longest."""
    width = max([len(s) for s in seqs] + [1])
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
            valid[i, :len(s)] = True
    return ids.to(device), valid.to(device)
