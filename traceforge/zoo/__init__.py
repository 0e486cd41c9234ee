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

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(slots=True)
class RunStats:
    """One execution. Times are absolute ``time.monotonic_ns()`` readings (callers convert to the
    run clock); ``gpu_ns`` is the CUDA-event time of the whole execution (None on CPU)."""

    service_start_ns: int
    first_token_ns: int | None
    service_end_ns: int
    gpu_ns: int | None
    tokens_out: int


class LoadedModel:
    """A zoo model resident on one device, ready to serve requests."""

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

    def run(self, batch_size: int, seq_len: int, max_new_tokens: int, *,
            label: str | None = None) -> RunStats:
        """Execute one request (or one dynamic batch) synchronously on the current stream."""
        import torch

        problem = self.check_shape(batch_size, seq_len, max_new_tokens)
        if problem:
            raise ValueError(problem)
        cuda = self.is_cuda
        if cuda:
            torch.cuda.nvtx.range_push(label or f"{self.name} b{batch_size} s{seq_len}")
            start_ev = torch.cuda.Event(enable_timing=True)
            end_ev = torch.cuda.Event(enable_timing=True)
        try:
            service_start = time.monotonic_ns()
            if cuda:
                start_ev.record()
            first_token = None
            tokens = 0
            with torch.inference_mode():
                inputs = self.synthesise(batch_size, seq_len)
                kind = self.entry.kind
                if kind == "vision":
                    self.model(pixel_values=inputs, **self._vision_kwargs())
                elif kind == "encoder" or max_new_tokens == 0:
                    self.model(input_ids=inputs)
                else:
                    first_token = self._decode(inputs, max_new_tokens)
                    tokens = batch_size * max_new_tokens
            if cuda:
                end_ev.record()
                end_ev.synchronize()
            service_end = time.monotonic_ns()
            gpu_ns = int(start_ev.elapsed_time(end_ev) * 1e6) if cuda else None
        finally:
            if cuda:
                torch.cuda.nvtx.range_pop()
        return RunStats(service_start, first_token, service_end, gpu_ns, tokens)

    def _vision_kwargs(self) -> dict:
        # ViT's position embeddings are for config.image_size; other sides are interpolated.
        return {"interpolate_pos_encoding": True} if self.entry.model_class == "ViTModel" else {}

    def _decode(self, input_ids, max_new_tokens: int, collect: list | None = None) -> int:
        """Prefill + greedy decode of exactly ``max_new_tokens`` tokens with a KV cache.

        The host synchronises once, after the first token (its time is the TTFT a streaming
        server would see); the remaining steps are queued without host round trips, as a
        serving engine would. Returns the first token's monotonic time; ``collect`` (tests)
        receives each step's token ids.
        """
        import torch

        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        if self.is_cuda:
            torch.cuda.current_stream().synchronize()
        first_token = time.monotonic_ns()
        key = self._cache_key
        for _ in range(max_new_tokens - 1):
            if collect is not None:
                collect.append(next_ids)
            out = self.model(input_ids=next_ids, use_cache=True, logits_to_keep=1,
                             **{key: getattr(out, key)})
            next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        if collect is not None:
            collect.append(next_ids)
        return first_token

    def greedy_ids(self, input_ids, max_new_tokens: int):
        """The token ids the serving loop generates (for checks against ``generate``)."""
        import torch

        steps: list = []
        with torch.inference_mode():
            self._decode(input_ids, max_new_tokens, collect=steps)
        return torch.cat(steps, dim=1)


def build_model(name: str, device: str = "cpu", dtype: str | None = None,
                seed: int = 0) -> LoadedModel:
    """Build zoo entry ``name`` on ``device`` with seeded random weights, ready for ``run``."""
    import torch

    entry = get_entry(name)
    dtype = resolve_dtype(entry, device, dtype)
    transformers = _import_transformers()
    config = make_config(entry)
    started = time.perf_counter()
    torch.manual_seed(seed)  # seeds the CUDA generators too
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index or 0)  # set_device needs an index
        torch.cuda.set_device(dev)
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
