"""Build the integration target's model: a random-weight tiny Llama with a word-level tokenizer.

Run with the vLLM venv's python (it has torch, transformers and tokenizers)::

    .venv-vllm/bin/python tests/integration/tiny_llama.py OUT_DIR

Nothing is downloaded. The tokenizer is built here, not trained: ``<s>``, ``</s>``, ``<unk>``
and 4,000 words ``w0`` … ``w3999``, split on whitespace, so a prompt of N space-separated
vocabulary words is exactly N tokens (plus BOS) under it — also for ``"a a a"``, since ``a`` is in
the vocabulary too. Weights are random (seed 0): the outputs are noise, which is all a latency
test needs (``ignore_eos`` makes the server produce exactly ``max_tokens``).
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = 4000


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "a": 3}
    for i in range(WORDS):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention kernels refuse small head sizes (16 fails).
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, bos_token_id=0, eos_token_id=1,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
