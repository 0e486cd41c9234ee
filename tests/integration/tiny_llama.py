"""Build the integration target's model: a random-weight tiny Llama with the shipped tokenizer.

Run with the vLLM venv's python (it has torch, transformers and tokenizers)::

    .venv-vllm/bin/python tests/integration/tiny_llama.py OUT_DIR

Nothing is downloaded. The tokenizer is traceforge's own ``tiny-bpe`` (traceforge/data/tokenizer,
a 4,096-entry byte-level BPE built by tests/fixtures/make_tokenizer.py), so a replay with
``--tokenizer tiny-bpe`` sends prompts of exactly ``seq_len`` tokens under the server's
tokenizer (no BOS is added). Weights are random (seed 0): the outputs are noise, which is all a
latency test needs (``ignore_eos`` makes the server produce exactly ``max_tokens``).
"""

from __future__ import annotations

import sys
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[2] / "traceforge" / "data" / "tokenizer" / "tokenizer.json"
MAX_POSITIONS = 16384


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(TOKENIZER))
    eos = tok.token_to_id("<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention kernels refuse small head sizes (16 fails).
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128,
                         intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=MAX_POSITIONS,
                         bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
