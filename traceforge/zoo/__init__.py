"""Model zoo: models built from transformers configs with random (seeded) weights, no downloads.

Each :class:`ZooEntry` names a transformers model class and the config to build it from. The
parameter counts are constants here so ``traceforge zoo list`` starts without importing torch; a
test rebuilds every entry on the ``meta`` device and checks them.

:func:`build_model` builds a model straight on the target device in the serving dtype (under
``torch.device(dev)``, so the initialisers run on the GPU instead of for minutes on the CPU) and
returns a :class:`LoadedModel` whose :meth:`LoadedModel.run` executes one request synchronously
with inputs synthesised from the trace row: token ids ``batch × seq_len`` for text, images
``batch × 3 × side × side`` (side = ``seq_len``) for vision, and for decoders a greedy loop with a
KV cache that produces exactly ``max_new_tokens`` tokens (no EOS stop: exactness over realism).
"""

from __future__ import annotations

import collections
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from traceforge.errors import BadInput

KINDS = ("encoder", "decoder", "vision")

# Bytes per parameter of each serving dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str  # encoder | decoder | vision
    model_class: str  # attribute of the ``transformers`` package
    config_class: str
    config: dict[str, Any] = field(default_factory=dict)
    params: int = 0  # checked against a meta-device build by tests/test_zoo.py
    cuda_dtype: str = "bfloat16"  # serving dtype on a GPU; CPU always runs float32
    max_positions: int | None = None  # encoder/decoder: longest sequence the model accepts
    min_side: int = 1  # vision: smallest image side the model accepts
    description: str = ""

    def weight_bytes(self, dtype: str | None = None) -> int:
        return self.params * DTYPE_BYTES[dtype or self.cuda_dtype]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "model_class": self.model_class,
            "params": self.params,
            "cuda_dtype": self.cuda_dtype,
            "weight_bytes": self.weight_bytes(),
            "max_positions": self.max_positions,
            "description": self.description,
        }


_TINY_TEXT = {"vocab_size": 1000}
_LLAMA_1B = {  # Llama-3.2-1B shapes
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "vocab_size": 128256, "max_position_embeddings": 8192, "tie_word_embeddings": True,
}

_ENTRIES = [
    ZooEntry("distilbert-base", "encoder", "DistilBertModel", "DistilBertConfig", {},
             66_362_880, max_positions=512, description="DistilBERT base, encoder forward"),
    ZooEntry("bert-base", "encoder", "BertModel", "BertConfig", {},
             109_482_240, max_positions=512, description="BERT base, encoder forward"),
    ZooEntry("distilgpt2", "decoder", "GPT2LMHeadModel", "GPT2Config", {"n_layer": 6},
             81_912_576, max_positions=1024, description="DistilGPT-2, greedy KV-cache decode"),
    ZooEntry("gpt2", "decoder", "GPT2LMHeadModel", "GPT2Config", {},
             124_439_808, max_positions=1024, description="GPT-2 small, greedy KV-cache decode"),
    ZooEntry("llama-1b", "decoder", "LlamaForCausalLM", "LlamaConfig", _LLAMA_1B,
             1_235_814_400, max_positions=8192,
             description="Llama-3.2-1B-shaped decoder (GQA), greedy KV-cache decode"),
    ZooEntry("mistral-7b", "decoder", "MistralForCausalLM", "MistralConfig", {},
             7_241_732_096, max_positions=131072,
             description="MistralConfig defaults (7B, GQA), bf16, greedy KV-cache decode"),
    ZooEntry("vit-base", "vision", "ViTModel", "ViTConfig", {},
             86_389_248, min_side=16, description="ViT-B/16, image side = seq_len"),
    ZooEntry("resnet-50", "vision", "ResNetForImageClassification", "ResNetConfig",
             {"num_labels": 1000}, 25_557_032, min_side=32,
             description="ResNet-50 classifier, image side = seq_len"),
    ZooEntry("tiny-bert", "encoder", "BertModel", "BertConfig",
             {**_TINY_TEXT, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64},
             66_656, cuda_dtype="float32", max_positions=512,
             description="CPU-sized BERT for tests"),
    ZooEntry("tiny-gpt2", "decoder", "GPT2LMHeadModel", "GPT2Config",
             {**_TINY_TEXT, "n_embd": 32, "n_layer": 2, "n_head": 2},
             90_240, cuda_dtype="float32", max_positions=1024,
             description="CPU-sized GPT-2 for tests"),
    ZooEntry("tiny-llama", "decoder", "LlamaForCausalLM", "LlamaConfig",
             {**_TINY_TEXT, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 2048},
             82_592, cuda_dtype="float32", max_positions=2048,
             description="CPU-sized Llama for tests"),
    ZooEntry("tiny-vit", "vision", "ViTModel", "ViTConfig",
             {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "image_size": 32, "patch_size": 8},
             24_960, cuda_dtype="float32", min_side=8,
             description="CPU-sized ViT for tests, image side = seq_len"),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str, *, key: str = "zoo") -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise BadInput("unknown model-zoo entry", key=key, value=name,
                       allowed=", ".join(ZOO)) from None


def _import_transformers():
    import transformers

    transformers.logging.set_verbosity_error()  # "Generate config ..." chatter on every build
    return transformers


def make_config(entry: ZooEntry):
    transformers = _import_transformers()
    config = getattr(transformers, entry.config_class)(**entry.config)
    if entry.kind != "vision":
        config._attn_implementation = "sdpa"
    return config


def count_params_meta(entry: ZooEntry) -> int:
    """Parameter count of the real architecture, built on the meta device (no memory, ~ms)."""
    import torch

    transformers = _import_transformers()
    with torch.device("meta"):
        model = getattr(transformers, entry.model_class)(make_config(entry))
    return sum(p.numel() for p in model.parameters())


def resolve_dtype(entry: ZooEntry, device: str, dtype: str | None = None) -> str:
    if dtype is not None:
        if dtype not in DTYPE_BYTES:
            raise BadInput("unknown dtype", key="dtype", value=dtype,
                           allowed=", ".join(DTYPE_BYTES))
        return dtype
    return entry.cuda_dtype if device.startswith("cuda") else "float32"


COMPILE_MODES = ("eager", "graphs", "compiled")
# TorchInductor options of the ``compiled`` decode step (torch.compile(options=...)). Empty:
# Inductor's defaults. Set per model with ``LoadedModel.inductor_options`` (the decode
# benchmark compares variants; docs/results/serving-h200.md has the numbers).
INDUCTOR_OPTIONS: dict = {}
# ``compiled`` fuses each layer's q/k/v and gate/up projections first (zoo/serving.py
# fuse_projections): mistral-7b bf16 batch 1 on an H200 went from 5.33-5.35 to 4.74 ms/token
# (1.37x the weight-streaming floor; docs/results/serving-h200.md).
FUSE_PROJECTIONS = True
# ``compiled`` compiles the decode step once for every bucket of a model (Inductor with dynamic
# shapes: the KV-cache length and the batch are symbols; a batch of 1 and of more than 1 are two
# compiles, as Dynamo specialises sizes 0 and 1), not once per bucket. Per bucket (False) each
# decode bucket paid a full Inductor compile during pre-warm (~72 s for mistral-7b on the
# H200), and past Dynamo's recompile limit (8 per function, shared by every model of the
# process) the remaining buckets silently ran the uncompiled step: llama-1b's 11 decode buckets
# of benchmarks/zoo-sweep.toml did not finish pre-warm in 85 s (H200, 2026-12-01), and on the
# CPU the 9th tiny-llama bucket hit the limit. See docs/resident.md for the measured cost.
COMPILE_DYNAMIC = True
# Dynamo's recompile limit while ``compiled`` models are built: room for every bucket even where
# a model compiles per bucket (COMPILE_DYNAMIC False), so none falls back to the uncompiled step.
COMPILED_RECOMPILE_LIMIT = 256


def _raise_recompile_limit(limit: int) -> None:
    """Let Dynamo keep ``limit`` compiled versions of a function (its default, 8, counts every
    bucket of every model in the process: beyond it a bucket silently runs uncompiled). The
    option was ``cache_size_limit`` before torch 2.6."""
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), limit))
            break
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(int(config.accumulated_recompile_limit),
                                                 4 * limit)


class Launched(NamedTuple):
    """A request enqueued by :meth:`LoadedModel.launch` (``launched_ns``: monotonic)."""

    bucket: Any
    start_ev: Any
    end_ev: Any
    launched_ns: int
    output: Any
    issued_ns: int | None = None  # right before the start event was recorded


# A stream that had nothing in flight when a request was issued (LoadedModel.finish's anchor).
IDLE_STREAM = (0, None)


@dataclass(slots=True)
class DecodeLaunched:
    """A graph-captured decode begun by :meth:`LoadedModel.begin_decode`: inputs filled and the
    prefill enqueued. :meth:`LoadedModel.resume_decode` waits for the first token and enqueues
    the remaining ``new - 1`` steps (``steps_pending`` then False); :meth:`LoadedModel.finish`
    waits for the last. ``launched_ns`` / ``first_token_ns``: monotonic."""

    bucket: Any
    start_ev: Any
    prefill_ev: Any
    end_ev: Any
    launched_ns: int
    runner: Any
    new: int
    batch_size: int
    label: str
    first_token_ns: int | None = None
    steps_pending: bool = True
    issued_ns: int | None = None  # right before the start event was recorded


class BucketDoesNotFit(RuntimeError):
    """A bucket's static buffers (KV cache, graph pool) do not fit in free device memory."""


@dataclass(slots=True)
class RunStats:
    """One execution. Times are absolute ``time.monotonic_ns()`` readings (callers convert to the
    run clock); ``gpu_ns`` is the CUDA-event time of the whole execution (None on CPU);
    ``bucket_*`` the padded shape that ran."""

    service_start_ns: int
    first_token_ns: int | None
    service_end_ns: int
    gpu_ns: int | None
    tokens_out: int
    bucket_seq_len: int | None = None
    bucket_batch_size: int | None = None


class LoadedModel:
    """A zoo model resident on one device, ready to serve requests.

    :meth:`configure` sets the shape buckets and the execution variant (``eager``: the model's
    own forward and transformers' dynamic KV cache; ``graphs``: CUDA graphs per bucket and a
    static KV cache, see :mod:`traceforge.zoo.serving`); :meth:`prewarm` runs every bucket once
    before traffic; :meth:`run` serves one request (or one dynamic batch) in its bucket.
    """

    def __init__(self, entry: ZooEntry, model, device: str, dtype: str, seed: int,
                 build_s: float) -> None:
        import torch

        self.entry = entry
        self.name = entry.name
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.torch_dtype = getattr(torch, dtype)
        self.build_s = build_s
        self.is_cuda = self.device.type == "cuda"
        config = model.config
        self.vocab_size = getattr(config, "vocab_size", None)
        # Inputs are synthesised from a per-model generator, so a run is reproducible.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        # transformers renamed the KV-cache argument and output field `past_key_values` to
        # `cache` (5.2x); the GPU image may carry either version.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_key = "cache" if "cache" in forward_args else "past_key_values"
        self.inductor_options = dict(INDUCTOR_OPTIONS)
        # ``compiled``: fuse q/k/v and gate/up projections first (zoo/serving.py)
        self.fuse_projections = FUSE_PROJECTIONS
        self.compile_dynamic = COMPILE_DYNAMIC  # ``compiled``: one compile for all buckets
        self._events: list = []  # free (start, end) CUDA event pairs (_event_pair)
        self._prefill_events: list = []  # free untimed events (begin_decode)
        self._retired: collections.deque = collections.deque()  # pairs finish() may still read
        self.configure()

    def configure(self, *, compile: str = "eager", seq_buckets: list[int] | None = None,
                  batch_buckets: bool = False) -> None:
        """Buckets and variant. ``seq_buckets`` None = the defaults (buckets.py)."""
        from traceforge.zoo.buckets import BucketPolicy

        if compile not in COMPILE_MODES:
            raise BadInput("unknown compile variant", key="--compile", value=compile,
                           allowed=", ".join(COMPILE_MODES))
        if compile in ("graphs", "compiled") and not self.is_cuda:
            raise BadInput("CUDA graphs need a CUDA device (use --compile eager on the CPU)",
                           key="--compile", value=compile)
        self.compile = compile
        self.policy = BucketPolicy.for_entry(self.entry, seq_buckets, batch_buckets)
        self._runners: dict = {}
        self._pool = None
        if compile in ("graphs", "compiled"):
            import torch

            self._pool = torch.cuda.graph_pool_handle()  # one memory pool for all its graphs
        if compile == "compiled":
            _raise_recompile_limit(COMPILED_RECOMPILE_LIMIT)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def check_shape(self, batch_size: int, seq_len: int, max_new_tokens: int) -> str | None:
        """Why this model cannot serve the request shape, or None."""
        e = self.entry
        if batch_size < 1 or seq_len < 1 or max_new_tokens < 0:
            return f"batch_size/seq_len must be >= 1 and max_new_tokens >= 0 for {e.name}"
        if e.kind == "vision":
            if seq_len < e.min_side:
                return f"image side seq_len={seq_len} < {e.min_side}, the smallest {e.name} takes"
            if max_new_tokens:
                return f"{e.name} is a vision model: max_new_tokens must be 0"
        elif e.kind == "encoder":
            if e.max_positions and seq_len > e.max_positions:
                return f"seq_len={seq_len} > {e.max_positions} positions of {e.name}"
            if max_new_tokens:
                return f"{e.name} is an encoder: max_new_tokens must be 0"
        elif e.max_positions and seq_len + max_new_tokens > e.max_positions:
            return (f"seq_len + max_new_tokens = {seq_len + max_new_tokens} > "
                    f"{e.max_positions} positions of {e.name}")
        return None

    def bucket(self, batch_size: int, seq_len: int, max_new_tokens: int):
        """The bucket this request runs in (ValueError naming why it cannot run)."""
        problem = self.check_shape(batch_size, seq_len, max_new_tokens)
        if problem:
            raise ValueError(problem)
        return self.policy.bucket(batch_size, seq_len, max_new_tokens)

    def synthesise(self, batch_size: int, seq_len: int, request_ids=None, *,
                   batch_sizes=None, prefix_blocks=None, block_tokens: int | None = None):
        """Inputs for ``batch_size`` rows. Text models given ``request_ids`` take the same token
        ids as HTTP prompts (:func:`traceforge.prompts.model_token_ids`: unique per request,
        identical over equal prefix blocks); rows beyond the requests' items (bucket padding)
        and calls without ids get ids from the model's seeded generator."""
        import torch

        if self.entry.kind == "vision":
            return torch.randn((batch_size, 3, seq_len, seq_len), device=self.device,
                               dtype=self.torch_dtype, generator=self.generator)
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), device=self.device,
                            generator=self.generator)
        if request_ids is not None:
            from traceforge.prompts import model_token_ids

            rows = model_token_ids(self.vocab_size, request_ids, seq_len,
                                   batch_sizes=batch_sizes, prefix_blocks=prefix_blocks,
                                   block_tokens=block_tokens)[:batch_size]
            ids[: len(rows)] = torch.from_numpy(rows).to(self.device)
        return ids

    # -- serving -------------------------------------------------------------------------------
    def run(self, batch_size: int, seq_len: int, max_new_tokens: int, *,
            label: str | None = None) -> RunStats:
        """Execute one request (or one dynamic batch) synchronously on the current stream."""
        import torch

        bucket = self.bucket(batch_size, seq_len, max_new_tokens)
        cuda = self.is_cuda
        runner = None
        if self.compile != "eager":
            runner = self._runner(bucket, max_new_tokens)  # captured at first use
        if cuda:
            torch.cuda.nvtx.range_push(label or f"{self.name} b{batch_size} s{seq_len}")
            start_ev, end_ev = self._event_pair()
        try:
            first_token = None
            tokens = 0
            with torch.inference_mode():
                if runner is not None:  # inputs before the timed window (see launch)
                    runner.fill(batch_size, seq_len)
                service_start = time.monotonic_ns()
                if cuda:
                    start_ev.record()
                if runner is not None:
                    first_token = self._run_graphs(runner, max_new_tokens)
                else:
                    first_token = self._run_eager(bucket, batch_size, seq_len, max_new_tokens)
                if self.entry.kind == "decoder" and max_new_tokens:
                    tokens = batch_size * max_new_tokens
            if cuda:
                end_ev.record()
                end_ev.synchronize()
            service_end = time.monotonic_ns()
            gpu_ns = None
            if cuda:
                gpu_ns = int(start_ev.elapsed_time(end_ev) * 1e6)
                self._events.append((start_ev, end_ev))
        finally:
            if cuda:
                torch.cuda.nvtx.range_pop()
        return RunStats(service_start, first_token, service_end, gpu_ns, tokens,
                        bucket.seq, bucket.batch)

    def launch(self, batch_size: int, seq_len: int, max_new_tokens: int, *,
               label: str | None = None):
        """Enqueue one graph-captured forward on the current stream and return at once (the
        executor pipelines one request ahead); :meth:`finish` waits for it. None when this
        request cannot be enqueued without waiting: eager or CPU (:meth:`run`), or a decode
        (the host waits for its first token: :meth:`begin_decode` / :meth:`resume_decode`)."""
        import torch

        if not self.can_launch(batch_size, seq_len, max_new_tokens):
            return None
        bucket = self.bucket(batch_size, seq_len, max_new_tokens)
        runner = self._runner(bucket, max_new_tokens)
        torch.cuda.nvtx.range_push(label or f"{self.name} b{batch_size} s{seq_len}")
        try:
            start_ev, end_ev = self._event_pair()
            launched = time.monotonic_ns()
            # Inputs first, then the start event right before the graph: a torch op releases
            # the GIL and must win it back, and on an idle GPU each wait between the start event
            # and the graph launch counts as GPU time (another thread -- the event loop, a
            # decoding executor -- can hold the GIL for a switch interval). With the fill's two
            # ops outside, nothing but the replay call sits between the two. Measured on the
            # H200 (docs/results/simulator-fidelity-h200.md): distilbert-base GPU time after a
            # 0.1-0.3 ms idle gap went from 1.45x its bucket median to 1.03x.
            runner.fill(batch_size, seq_len)
            issued = time.monotonic_ns()
            start_ev.record()
            runner.run()
            output = runner.result()  # copied out: the next replay overwrites the buffers
            end_ev.record()
        finally:
            torch.cuda.nvtx.range_pop()
        return Launched(bucket, start_ev, end_ev, launched, output, issued)

    def finish(self, handle, anchor=None) -> RunStats:
        """Wait for a :meth:`launch` or a resumed :meth:`begin_decode`. The service interval
        is the GPU's: ``gpu_ns`` long (its CUDA events), placed on the host clock by
        ``anchor``:

        - ``(host_ns, event)``: an event of an earlier request on the same stream and its host
          time — the end of the request it was issued behind (as this method returned it), or
          the start of an inline request issued on an idle stream: it started
          ``event.elapsed_time(start_ev)`` after that, a device-clock interval;
        - :data:`IDLE_STREAM`: nothing was in flight on the stream when it was issued (and no
          other context can hold the stream back: not ``timeslice``), so it started when its
          start event was recorded;
        - None: it ended when this thread saw it end (the latest it can have ended).

        The first two never place it before it was issued nor after the host saw it end.
        Before 2026-12-01 every request took the third: a request whose end the executor
        thread read late (waiting for the GIL, or busy launching the next) was recorded late
        by as much, and the gap to the next request absorbed it (H200, exclusive, 2026-12-01
        02:45 UTC: gaps to an already waiting request, by class, p10 down to -135 µs and p90
        up to +812 µs, and 490 of 2,441 consecutive intervals overlapping; with the anchors
        none overlap and the smallest gap is 6 µs; docs/results/simulator-fidelity-h200.md)."""
        bucket, start_ev, end_ev = handle.bucket, handle.start_ev, handle.end_ev
        end_ev.synchronize()
        seen = time.monotonic_ns()
        gpu_ns = round(start_ev.elapsed_time(end_ev) * 1e6)
        issued = handle.issued_ns or handle.launched_ns
        latest = max(issued, seen - gpu_ns)
        start = max(handle.launched_ns, seen - gpu_ns)
        if anchor is not None:
            prev_ns, prev_ev = anchor
            estimate = (issued if prev_ev is None
                        else prev_ns + round(prev_ev.elapsed_time(start_ev) * 1e6))
            start = min(max(estimate, issued), latest)
        end = start + gpu_ns
        # Both events are done, but the next request's finish may still read this end event
        # (its anchor): a pair goes back to the pool two finishes later.
        self._retired.append((start_ev, end_ev))
        while len(self._retired) > 2:
            self._events.append(self._retired.popleft())
        first, tokens = None, 0
        if isinstance(handle, DecodeLaunched):
            self._prefill_events.append(handle.prefill_ev)
            first = min(max(handle.first_token_ns, start), end)
            tokens = handle.batch_size * handle.new
        return RunStats(start, first, end, gpu_ns, tokens, bucket.seq, bucket.batch)

    def can_pipeline_decode(self, batch_size: int, seq_len: int, max_new_tokens: int) -> bool:
        """Whether this request is a graph-captured decode that :meth:`begin_decode` /
        :meth:`resume_decode` can serve, so the executor can enqueue the next request behind
        its last step instead of waiting for it (the host still waits for the first token)."""
        return (self.compile != "eager" and self.is_cuda and self.entry.kind == "decoder"
                and max_new_tokens > 0)

    def begin_decode(self, batch_size: int, seq_len: int, max_new_tokens: int, *,
                     label: str | None = None) -> DecodeLaunched:
        """Fill a decode's inputs and enqueue its prefill on the current stream (behind any
        request in flight there); returns at once. The executor completes the request in
        flight before it calls :meth:`resume_decode`, so that one's end is read while this
        prefill runs, not after it (the same prefill and step graphs as :meth:`run`)."""
        import torch

        bucket = self.bucket(batch_size, seq_len, max_new_tokens)
        runner = self._runner(bucket, max_new_tokens)
        label = label or f"{self.name} b{batch_size} s{seq_len}"
        torch.cuda.nvtx.range_push(label + " prefill")
        try:
            start_ev, end_ev = self._event_pair()
            prefill_ev = (self._prefill_events.pop() if self._prefill_events
                          else torch.cuda.Event())
            launched = time.monotonic_ns()
            with torch.inference_mode():
                runner.fill(batch_size, seq_len)  # before the start event, as in launch()
                issued = time.monotonic_ns()
                start_ev.record()
                runner.prefill()
            prefill_ev.record()
        finally:
            torch.cuda.nvtx.range_pop()
        return DecodeLaunched(bucket, start_ev, prefill_ev, end_ev, launched, runner,
                              max_new_tokens, batch_size, label, issued_ns=issued)

    def resume_decode(self, handle: DecodeLaunched) -> None:
        """Wait for a begun decode's first token (the TTFT a streaming server would see, as in
        :meth:`run`), then enqueue its remaining steps and its end event; returns at once."""
        import torch

        handle.prefill_ev.synchronize()
        handle.first_token_ns = time.monotonic_ns()
        torch.cuda.nvtx.range_push(handle.label + " decode")
        try:
            with torch.inference_mode():
                for _ in range(handle.new - 1):
                    handle.runner.step()
            handle.end_ev.record()
        finally:
            torch.cuda.nvtx.range_pop()
        handle.steps_pending = False

    def can_launch(self, batch_size: int, seq_len: int, max_new_tokens: int) -> bool:
        """Whether :meth:`launch` enqueues this request without waiting (a graph-captured
        forward on CUDA; decode waits for its first token on the host)."""
        return (self.compile != "eager" and self.is_cuda
                and not (self.entry.kind == "decoder" and max_new_tokens > 0))

    def poll(self, handle) -> bool:
        """Whether a :meth:`launch` has ended on the device (never blocks)."""
        return handle.end_ev.query()

    def _event_pair(self):
        """Two timing events, reused: constructing a CUDA event costs a driver call each, on
        the request's critical path. ``finish`` returns the pair once both have completed
        (list append/pop are atomic under the GIL: the executor and loop threads share it)."""
        try:
            return self._events.pop()
        except IndexError:
            import torch

            return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _run_eager(self, bucket, batch_size: int, seq_len: int, new: int) -> int | None:
        import torch

        kind = self.entry.kind
        inputs = self.synthesise(bucket.batch, bucket.seq)
        if kind == "vision":
            self.model(pixel_values=inputs, **self._vision_kwargs())
            return None
        mask = None
        pad = bucket.seq - seq_len
        if pad:
            mask = torch.ones((bucket.batch, bucket.seq), dtype=torch.long, device=self.device)
        if kind == "encoder" or new == 0:
            if mask is not None:
                mask[:, seq_len:] = 0  # right padding
            self.model(input_ids=inputs, attention_mask=mask)
            return None
        if mask is not None:
            mask[:, :pad] = 0  # left padding: the last token is a real one
        return self._decode(inputs, new, mask=mask)

    def _runner(self, bucket, new: int):
        from traceforge.zoo.buckets import Bucket
        from traceforge.zoo.serving import DecodeRunner, ForwardRunner

        decode = self.entry.kind == "decoder" and new > 0
        key = bucket if decode else Bucket(bucket.batch, bucket.seq, 0)
        runner = self._runners.get(key)
        if runner is None:
            self._check_room(key, decode)
            graphs = self.compile != "eager"
            if self.compile == "compiled" and self.fuse_projections:
                from traceforge.zoo.serving import fuse_projections

                # Before any runner is captured, not only the first decode one (DecodeRunner):
                # fusing replaces the projection weights, so a forward graph captured earlier
                # (a prefill-only bucket sorts, and pre-warms, before the decode buckets) would
                # replay reads of the freed original weights. Idempotent.
                fuse_projections(self.model)
            try:
                runner = (DecodeRunner(self, key, graphs=graphs, pool=self._pool,
                                       inductor=self.compile == "compiled") if decode
                          else ForwardRunner(self, key, graphs=graphs, pool=self._pool))
            except Exception as exc:
                if "out of memory" in str(exc).lower():
                    raise BucketDoesNotFit(self._no_room(key, None)) from exc
                raise
            self._runners[key] = runner
        return runner

    def _check_room(self, bucket, decode: bool) -> None:
        if not self.is_cuda or not decode:
            return
        import torch

        from traceforge.zoo.serving import kv_bytes_estimate

        need = kv_bytes_estimate(self.model.config, bucket.batch,
                                 bucket.seq + bucket.new_cap, DTYPE_BYTES[self.dtype])
        free = torch.cuda.mem_get_info(self.device)[0]
        if need is not None and need > free:
            raise BucketDoesNotFit(self._no_room(bucket, need, free))

    def _no_room(self, bucket, need: int | None, free: int | None = None) -> str:
        if free is None and self.is_cuda:
            import torch

            free = torch.cuda.mem_get_info(self.device)[0]
        what = f" needs {need / 2**30:.2f} GiB of KV cache," if need else " does not fit:"
        return (f"{self.name}: bucket {bucket.label()} (batch {bucket.batch}, seq "
                f"{bucket.seq}, context {bucket.seq + bucket.new_cap}){what} "
                f"{(free or 0) / 2**30:.2f} GiB free on {self.device}; use smaller "
                "--seq-buckets / --max-batch or fewer resident models")

    def _run_graphs(self, runner, new: int) -> int | None:
        """Run a filled runner (``run`` fills it before the start event)."""
        import torch

        if not hasattr(runner, "step"):
            runner.run()
            return None
        runner.prefill()
        if self.is_cuda:
            torch.cuda.current_stream().synchronize()
        first_token = time.monotonic_ns()
        for _ in range(new - 1):
            runner.step()
        return first_token

    def prewarm(self, buckets, new_tokens: dict | None = None,
                on_bucket=None) -> dict[str, float]:
        """Run every bucket once before traffic (graphs: capture them); seconds per bucket.

        ``new_tokens[bucket]``: the largest max_new_tokens a request in that bucket asks for
        (eager decode warms that many steps; a captured decode step serves any count).
        ``on_bucket(index, count, label, seconds)`` after each bucket (progress)."""
        import torch

        times: dict[str, float] = {}
        buckets = list(buckets)
        for i, bucket in enumerate(buckets):
            new = (new_tokens or {}).get(bucket, bucket.new_cap)
            t = time.perf_counter()
            # Graphs: capturing already ran the bucket (eager warm-up + capture); eager: one run
            # selects the shape's kernels and grows the allocator.
            self.run(bucket.batch, bucket.seq, new, label=f"prewarm {bucket.label()}")
            if self.is_cuda:
                torch.cuda.synchronize(self.device)
            times[bucket.label()] = round(time.perf_counter() - t, 4)
            if on_bucket is not None:
                on_bucket(i + 1, len(buckets), bucket.label(), times[bucket.label()])
        return times

    def _vision_kwargs(self) -> dict:
        # ViT's position embeddings are for config.image_size; other sides are interpolated.
        return {"interpolate_pos_encoding": True} if self.entry.model_class == "ViTModel" else {}

    def _decode(self, input_ids, max_new_tokens: int, collect: list | None = None,
                mask=None) -> int:
        """Prefill + greedy decode of exactly ``max_new_tokens`` tokens with transformers'
        dynamic KV cache (the eager variant). ``mask``: a 2-D padding mask for a left-padded
        prompt (position ids then count real tokens only).

        The host synchronises once, after the first token (its time is the TTFT a streaming
        server would see); the remaining steps are queued without host round trips, as a
        serving engine would. Returns the first token's monotonic time; ``collect`` (tests)
        receives each step's token ids.
        """
        import torch

        extra: dict = {}
        positions = None
        if mask is not None:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            extra = {"attention_mask": mask, "position_ids": positions}
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **extra)
        next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        if self.is_cuda:
            torch.cuda.current_stream().synchronize()
        first_token = time.monotonic_ns()
        key = self._cache_key
        for _ in range(max_new_tokens - 1):
            if collect is not None:
                collect.append(next_ids)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                positions = positions[:, -1:] + 1
                extra = {"attention_mask": mask, "position_ids": positions}
            out = self.model(input_ids=next_ids, use_cache=True, logits_to_keep=1,
                             **{key: getattr(out, key)}, **extra)
            next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        if collect is not None:
            collect.append(next_ids)
        return first_token

    def greedy_ids(self, input_ids, max_new_tokens: int, *, pad_to: int | None = None):
        """The token ids the eager serving loop generates (for checks against ``generate``);
        ``pad_to``: left-pad the prompt to this length first (masked)."""
        import torch

        steps: list = []
        mask = None
        if pad_to is not None and pad_to > input_ids.shape[1]:
            pad = pad_to - input_ids.shape[1]
            filler = torch.zeros((input_ids.shape[0], pad), dtype=input_ids.dtype,
                                 device=input_ids.device)
            input_ids = torch.cat([filler, input_ids], dim=1)
            mask = torch.ones_like(input_ids)
            mask[:, :pad] = 0
        with torch.inference_mode():
            self._decode(input_ids, max_new_tokens, collect=steps, mask=mask)
        return torch.cat(steps, dim=1)

    def static_greedy_ids(self, input_ids, max_new_tokens: int, *, bucket_seq: int | None = None,
                          graphs: bool = False, inductor: bool = False):
        """The token ids of the static-KV-cache decode loop (the ``graphs`` variant's logic; on
        the CPU it runs the same step functions without capture), prompt left-padded to
        ``bucket_seq``."""
        import torch

        from traceforge.zoo.buckets import SMALLEST_NEW_BUCKET, Bucket, pow2_at_least
        from traceforge.zoo.serving import DecodeRunner

        b, s = input_ids.shape
        seq = bucket_seq or s
        bucket = Bucket(b, seq, pow2_at_least(max_new_tokens, SMALLEST_NEW_BUCKET))
        pool = torch.cuda.graph_pool_handle() if graphs else None
        with torch.inference_mode():
            runner = DecodeRunner(self, bucket, graphs=graphs, pool=pool, inductor=inductor)
            runner.ids.zero_()
            runner.ids[:, seq - s:] = input_ids
            runner.real.fill_(s)
            runner.prefill()
            for _ in range(max_new_tokens - 1):
                runner.step()
            return runner.generated(max_new_tokens)


def build_model(name: str, device: str = "cpu", dtype: str | None = None,
                seed: int = 0) -> LoadedModel:
    """Build zoo entry ``name`` on ``device`` with seeded random weights, ready for ``run``."""
    import torch

    entry = get_entry(name)
    dtype = resolve_dtype(entry, device, dtype)
    transformers = _import_transformers()
    config = make_config(entry)
    started = time.perf_counter()
    dev = torch.device(device)
    torch.random.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index or 0)  # set_device needs an index
        torch.cuda.set_device(dev)
        # This device's generator only (torch.manual_seed seeds every device torch counts,
        # lazily, and torch counts with NVML, which can list devices this process cannot use:
        # see MpsDaemon.apply_client_env). Same weights: the same seed on the same device.
        torch.cuda.manual_seed(seed)
    cls = getattr(transformers, entry.model_class)
    # Parameters are created and initialised where they will live, in the serving dtype
    # (_from_config sets the default dtype around construction).
    with torch.device(dev):
        model = cls._from_config(config, dtype=getattr(torch, dtype))
    model = model.eval().requires_grad_(False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return LoadedModel(entry, model, str(dev), dtype, seed, time.perf_counter() - started)


def resident_bytes(names: list[str], device: str) -> int:
    """Weights of a resident set in its serving dtypes (what must fit before anything runs)."""
    return sum(get_entry(n).weight_bytes(resolve_dtype(get_entry(n), device)) for n in names)
