"""Per-bucket runners: padded inputs with masks, a static KV cache, and CUDA-graph replay.

One runner per (model, bucket). Each owns static input buffers of the bucket's shape, fills them
with fresh random inputs for every request (in place, from the model's seeded generator), and
runs the model either eagerly or — ``graphs`` — by replaying CUDA graphs captured once per
bucket (during pre-warm):

* :class:`ForwardRunner` (encoders, vision, and decoders asked for 0 new tokens): one forward.
  Text inputs carry a 4-D boolean attention mask (True = attend) built from the request's real
  length, so padded tokens never reach a real token's result (right padding; padded query rows
  attend to themselves only, which keeps every softmax row finite).
* :class:`DecodeRunner` (decoders): greedy decode of exactly ``max_new_tokens`` tokens through a
  :class:`StaticKV` cache preallocated for the bucket (context = seq bucket + new-token bucket).
  Prompts are left-padded; position ids count real tokens only (0 .. seq_len-1, then on), and
  the mask admits the real prompt and every generated position so far. The prefill is one graph
  and the decode step another, whose replay writes its token into the next step's input buffer
  and advances the cache offset *on the device*: a decode step is one ``graph.replay()`` with no
  host work and no host-device traffic in between. The host synchronises once, after the first
  token (its time is the TTFT a streaming server would see).

A 4-D mask is used as-is by transformers (``masking_utils`` returns an already prepared 4-D
mask unchanged, 5.17 and 5.24 alike), so no data-dependent mask shortcut (``mask.all()``, which
synchronises) runs inside a captured region. :class:`StaticKV` is traceforge's own cache (the
models call only ``update``): transformers' ``StaticCache`` changed between 5.17 and 5.24 (5.24
keeps its write offset in a Python int for sliding-window layers, which a graph replay would
not advance), so the graph path does not depend on it.
"""

from __future__ import annotations

from typing import Any


def _torch():
    import torch

    return torch


class StaticKV:
    """A preallocated KV cache of ``length`` positions per layer, written at a device-side
    offset (``self.pos``): ``update`` writes the new keys/values at ``pos, pos+1, ...`` and
    returns the whole buffers (the attention mask hides positions not yet written).

    Buffers are allocated by the first ``update`` of each layer (shapes and dtype from the
    model's own key states), which happens in the eager warm-up before any capture.
    """

    is_compileable = False

    def __init__(self, length: int, device) -> None:
        torch = _torch()
        self.length = length
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self._arange = torch.arange(length, dtype=torch.long, device=device)
        self.keys: dict[int, Any] = {}
        self.values: dict[int, Any] = {}

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        torch = _torch()
        if layer_idx not in self.keys:
            b, h, _, dk = key_states.shape
            dv = value_states.shape[-1]
            self.keys[layer_idx] = torch.zeros((b, h, self.length, dk), dtype=key_states.dtype,
                                               device=key_states.device)
            self.values[layer_idx] = torch.zeros((b, h, self.length, dv),
                                                 dtype=value_states.dtype,
                                                 device=value_states.device)
        idx = self._arange[: key_states.shape[-2]] + self.pos
        self.keys[layer_idx].index_copy_(2, idx, key_states)
        self.values[layer_idx].index_copy_(2, idx, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    # What transformers may ask of a cache outside ``update`` (not on the paths used here,
    # where position ids and a 4-D mask are always passed).
    def get_seq_length(self, layer_idx: int = 0):
        return self.pos

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.length

    def __len__(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values)
                   for t in d.values())


def kv_bytes_estimate(config, batch: int, length: int, dtype_bytes: int) -> int | None:
    """KV-cache bytes of one decode bucket, from the config (None where it cannot tell)."""
    layers = (getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None))
    heads = (getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None))
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 2 * layers * batch * kv_heads * length * head_dim * dtype_bytes


class _FusedLinear:
    """One matmul for several projections of the same input (q/k/v; gate/up): the weights
    are concatenated once, each original ``nn.Linear`` is replaced by a part module that
    returns its slice of the shared output, and the original weights become views into the
    concatenated one (no extra memory). Each part must be called exactly once per forward on
    the same input, in any order, which is how Llama/Mistral-family layers call them; the
    first call computes, the last one clears the shared state (so a compiled step starts
    from the same state every call and never recompiles)."""

    def __init__(self, linears) -> None:
        torch = _torch()
        weights = [lin.weight for lin in linears]
        self.weight = torch.cat([w.detach() for w in weights], dim=0)
        biases = [lin.bias for lin in linears]
        self.bias = (torch.cat([b.detach() for b in biases]) if biases[0] is not None
                     else None)
        self.n = len(linears)
        self.out = None
        self.used = 0

    def parts(self, linears) -> list:
        torch = _torch()
        out, start = [], 0
        for i, lin in enumerate(linears):
            stop = start + lin.weight.shape[0]
            # the original parameters become views of the concatenated weight
            lin.weight = torch.nn.Parameter(self.weight[start:stop], requires_grad=False)
            if self.bias is not None:
                lin.bias = torch.nn.Parameter(self.bias[start:stop], requires_grad=False)
            out.append(_make_part(self, i, start, stop))
            start = stop
        return out


def _part_class():
    torch = _torch()

    class Part(torch.nn.Module):
        def __init__(self, shared: _FusedLinear, index: int, start: int, stop: int) -> None:
            super().__init__()
            self.shared, self.index, self.start, self.stop = shared, index, start, stop

        def forward(self, x):
            s = self.shared
            if s.out is None:
                s.out = torch.nn.functional.linear(x, s.weight, s.bias)
                s.used = 0
            part = s.out[..., self.start:self.stop]
            s.used += 1
            if s.used == s.n:
                s.out = None
                s.used = 0
            return part

    return Part


def _make_part(shared, index, start, stop):  # the class is made on first use (lazy torch)
    global _PART_CLASS
    if _PART_CLASS is None:
        _PART_CLASS = _part_class()
    return _PART_CLASS(shared, index, start, stop)


_PART_CLASS = None


def fuse_projections(model) -> int:
    """Fuse each decoder layer's q/k/v projections into one matmul and gate/up into another
    (Llama/Mistral-family modules; other models are left alone). Idempotent; returns the
    number of fusions made. On the H200 the separate batch-1 projections of mistral-7b ran as
    7 cuBLAS GEMVs per layer, 5 of them split-K with a reduction kernel each (~250 us of the
    5.3 ms token in reduction kernels alone)."""
    if getattr(model, "_traceforge_fused", False):
        return 0
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None) or []
    made = 0
    for layer in layers:
        for owner, names in ((getattr(layer, "self_attn", None), ("q_proj", "k_proj", "v_proj")),
                             (getattr(layer, "mlp", None), ("gate_proj", "up_proj"))):
            lins = [getattr(owner, n, None) for n in names] if owner is not None else []
            if not lins or any(type(lin).__name__ != "Linear" for lin in lins):
                continue
            if len({lin.bias is None for lin in lins}) != 1:
                continue
            shared = _FusedLinear(lins)
            for name, part in zip(names, shared.parts(lins), strict=True):
                setattr(owner, name, part)
            made += 1
    model._traceforge_fused = True
    return made


class _Graphs:
    """Capture helper: eager warm-up on a side stream, then capture into a shared pool."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def capture(self, fn, warmups: int = 2, reset=None):
        torch = _torch()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmups):
                if reset is not None:
                    reset()
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            fn()
        return graph


class ForwardRunner:
    """One forward per request at a fixed bucket (encoders, vision, 0-token decoder calls).
    Captured as is under ``compiled`` too: only the decode step goes through Inductor."""

    def __init__(self, lm, bucket, *, graphs: bool, pool=None) -> None:
        torch = _torch()
        self.lm = lm
        self.bucket = bucket
        dev = lm.device
        b, s = bucket.batch, bucket.seq
        self.vision = lm.entry.kind == "vision"
        if self.vision:
            self.pixels = torch.zeros((b, 3, s, s), dtype=lm.torch_dtype, device=dev)
        else:
            self.ids = torch.zeros((b, s), dtype=torch.long, device=dev)
            self.real = torch.full((b, 1), s, dtype=torch.long, device=dev)
            self.causal = lm.entry.kind == "decoder"
            ar = torch.arange(s, device=dev)
            self._ar = ar
            self._tri = ar[None, :] <= ar[:, None]  # [q, k]: k <= q
            self._eye = ar[None, :] == ar[:, None]
        self.out = None
        self.graph = None
        if graphs:
            self.graph = _Graphs(pool).capture(self._forward)

    def _mask(self):
        # Right padding: key position k is real when k < real length.
        valid = self._ar[None, :] < self.real  # [b, k]
        allowed = valid[:, None, :]  # [b, 1(q), k]
        if self.causal:
            allowed = allowed & self._tri[None]
        return (allowed | self._eye[None])[:, None]  # [b, 1, q, k]

    def _forward(self):
        lm = self.lm
        if self.vision:
            self.out = lm.model(pixel_values=self.pixels, **lm._vision_kwargs())
            return
        kwargs: dict[str, Any] = {"input_ids": self.ids, "attention_mask": self._mask()}
        if self.causal:
            kwargs["logits_to_keep"] = 1
            kwargs["use_cache"] = False
        self.out = lm.model(**kwargs)

    def fill(self, batch_size: int, seq_len: int) -> None:
        """Fresh inputs for a request of ``batch_size`` x ``seq_len`` (real part of the bucket)."""
        lm = self.lm
        if self.vision:
            self.pixels.normal_(generator=lm.generator)
            return
        self.ids.random_(0, lm.vocab_size, generator=lm.generator)
        self.real.fill_(seq_len)

    def run(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self._forward()
        return self.out

    def result(self):
        """The model's main output for the bucket, copied out of the static buffers."""
        out = self.out
        first = out.logits if hasattr(out, "logits") else out[0]
        return first.clone()


class DecodeRunner:
    """Greedy decode through a static KV cache at a fixed (batch, seq, new_cap) bucket."""

    def __init__(self, lm, bucket, *, graphs: bool, pool=None, inductor: bool = False) -> None:
        torch = _torch()
        self.lm = lm
        self.bucket = bucket
        dev = lm.device
        b, s, n = bucket.batch, bucket.seq, max(bucket.new_cap, 1)
        self.length = s + n
        self.cache = StaticKV(self.length, dev)
        self.ids = torch.zeros((b, s), dtype=torch.long, device=dev)
        self.real = torch.full((b, 1), s, dtype=torch.long, device=dev)  # real prompt length
        self.tok = torch.zeros((b, 1), dtype=torch.long, device=dev)
        self.tokens = torch.zeros((b, n), dtype=torch.long, device=dev)  # generated ids
        ar_s = torch.arange(s, device=dev)
        self._ar_s = ar_s
        self._ar_l = torch.arange(self.length, device=dev)
        self._tri = self._ar_l[None, :] <= ar_s[:, None]  # [q, k]: k <= q
        self._eye = self._ar_l[None, :] == ar_s[:, None]
        self._key = lm._cache_key
        self.prefill_graph = self.step_graph = None
        step = self._step
        if inductor:
            # ``compiled``: the decode step's ~30 small kernels per layer (norms, rotary, SiLU,
            # residuals) fused by TorchInductor, then captured like the eager kernels. Compiled
            # during the warm-up below (pre-warm pays it): once for all of a model's buckets
            # with dynamic shapes (``LoadedModel.compile_dynamic``, COMPILE_DYNAMIC), else once
            # per bucket shape. Dynamo keys its cache on this method's code, so buckets share
            # the compiled step. Inductor options come from the model
            # (``LoadedModel.inductor_options``, see INDUCTOR_OPTIONS in zoo/__init__.py for
            # what they do and what they measured).
            options = dict(getattr(lm, "inductor_options", None) or {})
            if getattr(lm, "fuse_projections", False):
                fuse_projections(lm.model)
            dynamic = bool(getattr(lm, "compile_dynamic", False))
            step = torch.compile(self._step, dynamic=dynamic, options=options or None)
        self._step_fn = step
        if graphs:
            g = _Graphs(pool)
            self.prefill_graph = g.capture(self._prefill)
            # Each warm-up step starts from the prompt's end, so a 1-token cache never overflows.
            self.step_graph = g.capture(step, reset=lambda: self.cache.pos.fill_(s))

    def _valid_prompt(self):
        # Left padding: positions [s - real, s) of the prompt are real.
        s = self.bucket.seq
        return (self._ar_l[None, :] >= s - self.real) & (self._ar_l[None, :] < s)  # [b, L]

    def _prefill(self):
        s = self.bucket.seq
        self.cache.pos.zero_()
        valid = self._valid_prompt()
        mask = ((valid[:, None, :] & self._tri[None]) | self._eye[None])[:, None]
        positions = (self._ar_s[None, :] - (s - self.real)).clamp_(min=0)
        out = self.lm.model(input_ids=self.ids, attention_mask=mask, position_ids=positions,
                            use_cache=True, logits_to_keep=1, **{self._key: self.cache})
        nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        self.tok.copy_(nxt)
        self.tokens[:, :1].copy_(nxt)
        self.cache.pos.fill_(s)

    def _step(self):
        s = self.bucket.seq
        pos = self.cache.pos  # where this step's token is written
        allowed = self._valid_prompt() | ((self._ar_l[None, :] >= s) & (self._ar_l[None, :] <= pos))
        positions = self.real + (pos - s)
        out = self.lm.model(input_ids=self.tok, attention_mask=allowed[:, None, None, :],
                            position_ids=positions, use_cache=True, logits_to_keep=1,
                            **{self._key: self.cache})
        nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        self.tok.copy_(nxt)
        index = (pos - s + 1).clamp(max=self.tokens.shape[1] - 1).reshape(1, 1)
        self.tokens.scatter_(1, index.expand(self.tokens.shape[0], 1), nxt)
        self.cache.pos.add_(1)

    def fill(self, batch_size: int, seq_len: int) -> None:
        self.ids.random_(0, self.lm.vocab_size, generator=self.lm.generator)
        self.real.fill_(seq_len)

    def prefill(self) -> None:
        if self.prefill_graph is not None:
            self.prefill_graph.replay()
        else:
            self._prefill()

    def step(self) -> None:
        if self.step_graph is not None:
            self.step_graph.replay()
        else:
            self._step_fn()

    def generated(self, n: int):
        """The first ``n`` generated token ids, [batch, n] (a copy)."""
        return self.tokens[:, :n].clone()
