"""Synthetic prompts that share exactly what the trace says, and nothing more.

A request's prompt is ``seq_len`` tokens. Without ``prefix_blocks`` every token is drawn at
random, seeded by the request id (and batch item), so no two requests share a prefix a server
could cache. With ``prefix_blocks`` (block ids of ``prefix_block_tokens`` tokens, e.g. Mooncake's
``hash_ids``) the prompt is the concatenation of its blocks' token runs, cut to ``seq_len`` (the
last block may be partial), then a request-unique tail for whatever the blocks do not cover.
A block's tokens are a function of its id alone: equal ids give identical text.

**Exactly k blocks, none beyond.** Two requests that share k leading blocks share k × block
tokens; what follows (a different block, or each one's own tail) must differ in its *first*
token, else the server would see one more shared token. A random first token collides with
probability 1/V, so :class:`PromptBuilder.plan` assigns first tokens over the whole trace:
every "child" of a given prefix (each distinct next block, each request tail) gets its own rank,
and the rank in base V is written into the child's first d tokens (d = 1 while the prefix has at
most V children; V = the vocabulary in use). Siblings therefore differ in their first token
whenever a prefix has ≤ V children (always, with a real tokenizer's ~10⁴–10⁵ words), and within
their first d tokens otherwise. Without a plan (a backend that never sees the whole trace), first
tokens stay random: siblings then differ in their first token with probability 1 − 1/V.

**Exact lengths under a tokenizer.** Decoding random token ids and re-encoding the text rarely
gives back the same ids (pieces merge across boundaries, bytes split). :class:`Vocab` therefore
draws only from a vetted subset of the tokenizer's vocabulary: tokens that decode to a space
followed by ASCII letters (``" the"``, ``" value"``), encode back to themselves alone, and stay
themselves after another such word. Pre-tokenisers that split at spaces (GPT-2/Llama-3 byte-level
BPE, SentencePiece's ``▁``, WordPiece) then encode the concatenation of n vetted pieces to exactly
those n ids; :func:`load_vocab` checks this on a long random text and refuses a tokenizer for
which it fails. Counts exclude special tokens the server adds (a BOS token: one more).

Without ``--tokenizer`` the fallback is **word per token** (no tokenizer library needed): the
words (data/tokenizer/words.txt) are the vetted pieces of the shipped ``tiny-bpe`` tokenizer (the commonest English words and word starts in Python's own
documentation), each counted as one token; real tokenizers encode most of them as one token, so
lengths are close but not exact, and prefix sharing is exact in words.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traceforge.errors import BadInput

SHIPPED_TOKENIZER = "tiny-bpe"
SHIPPED_DIR = Path(__file__).parent / "data" / "tokenizer"
_WORD = re.compile(r"^[A-Za-z]{1,24}$")
_SPACE_MARKS = ("Ġ", "▁")  # byte-level BPE's and SentencePiece's word-start markers
_ROOT = np.iinfo(np.int64).min  # parent of a prompt's first block
_TAG_BLOCK, _TAG_TAIL, _TAG_PERM = 0xB10C, 0x7A11, 0x9E53
_CHECK_TOKENS = 4096  # length of the round-trip check text
BLOCK_CACHE = 4096  # block runs (and texts) kept: 4096 × 512 tokens × ~8 B ≈ 16 MB of runs


# -- vocabularies --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocab:
    """The pieces prompts are built from: ``pieces[i]`` is the text of token ``ids[i]``."""

    name: str  # "words" (fallback), a path, or a tokenizer name
    pieces: np.ndarray  # object array of str, each " " + letters
    ids: np.ndarray | None  # the tokenizer's ids of the pieces (None: word fallback)
    encoder: Any = field(default=None, repr=False, compare=False)  # texts -> list of id lists

    @property
    def size(self) -> int:
        return len(self.pieces)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under this vocabulary (words for the fallback)."""
        if self.encoder is None:
            return len(text.split())
        return len(self.encoder([text])[0])

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.name, "vetted_pieces": self.size,
                "unit": "words" if self.encoder is None else "tokens"}


class _Adapter:
    """One interface over ``tokenizers.Tokenizer`` and transformers tokenizers."""

    def __init__(self, tok) -> None:
        backend = getattr(tok, "backend_tokenizer", None)
        self.fast = backend if backend is not None else (
            tok if hasattr(tok, "encode_batch") else None)
        self.slow = None if self.fast is not None else tok

    def vocab_size(self) -> int:
        if self.fast is not None:
            return self.fast.get_vocab_size(with_added_tokens=True)
        return len(self.slow)

    def id_to_token(self, i: int) -> str | None:
        if self.fast is not None:
            return self.fast.id_to_token(i)
        return self.slow.convert_ids_to_tokens(i)

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.fast is not None:
            return [e.ids for e in self.fast.encode_batch(texts, add_special_tokens=False)]
        return [self.slow.encode(t, add_special_tokens=False) for t in texts]


def _open_tokenizer(spec: str):
    """A tokenizer from a tokenizer.json file, a directory, the shipped name, or a name in the
    local Hugging Face cache (never downloaded)."""
    path = SHIPPED_DIR if spec == SHIPPED_TOKENIZER else Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BadInput("needs the tokenizers package (pip install 'traceforge[tokenizer]')",
                           key="--tokenizer", value=spec) from exc

        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises plain Exceptions for bad files
            raise BadInput(f"not a tokenizer.json file ({exc})"[:300], key="--tokenizer",
                           value=spec) from exc
    try:
        import transformers
    except ImportError as exc:
        raise BadInput("no such file or directory (a tokenizer name needs transformers)",
                       key="--tokenizer", value=spec) from exc
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as exc:  # OSError, ValueError, ... for anything it cannot load
        raise BadInput("not a tokenizer file, directory, or a name in the local Hugging Face "
                       f"cache ({type(exc).__name__})", key="--tokenizer", value=spec) from exc


def _vet(adapter: _Adapter) -> tuple[np.ndarray, np.ndarray]:
    """(ids, pieces) of the tokens that round-trip alone and after another vetted word."""
    ids, pieces = [], []
    for i in range(adapter.vocab_size()):
        raw = adapter.id_to_token(i)
        if not raw or raw[0] not in _SPACE_MARKS or not _WORD.match(raw[1:]):
            continue
        ids.append(i)
        pieces.append(" " + raw[1:])
    if not ids:
        return np.empty(0, np.int64), np.empty(0, object)
    alone = adapter.encode(pieces)
    keep = [k for k, enc in enumerate(alone) if enc == [ids[k]]]
    if not keep:
        return np.empty(0, np.int64), np.empty(0, object)
    anchor = keep[0]
    after = adapter.encode([pieces[anchor] + pieces[k] for k in keep])
    keep = [k for k, enc in zip(keep, after, strict=True) if enc == [ids[anchor], ids[k]]]
    return np.asarray([ids[k] for k in keep], np.int64), np.asarray([pieces[k] for k in keep],
                                                                      dtype=object)


@functools.lru_cache(maxsize=8)
def load_vocab(spec: str | None = None) -> Vocab:
    """The vocabulary for ``--tokenizer spec`` (None: the word-per-token fallback)."""
    if spec is None:  # words.txt: the vetted pieces of tiny-bpe (tests/fixtures/make_tokenizer.py)
        words = (SHIPPED_DIR / "words.txt").read_text(encoding="utf-8").split()
        return Vocab(name="words", pieces=np.asarray([" " + w for w in words], dtype=object),
                     ids=None, encoder=None)
    adapter = _Adapter(_open_tokenizer(spec))
    ids, pieces = _vet(adapter)
    if len(ids) < 64:
        raise BadInput(f"only {len(ids)} vocabulary entries are a space plus letters and "
                       "round-trip alone; prompts need at least 64", key="--tokenizer",
                       value=spec)
    vocab = Vocab(name=spec, pieces=pieces, ids=ids, encoder=adapter.encode)
    rng = np.random.default_rng(0)
    sample = rng.integers(0, len(ids), _CHECK_TOKENS)
    got = adapter.encode(["".join(pieces[sample])])[0]
    if got != ids[sample].tolist():
        raise BadInput(f"random text of {_CHECK_TOKENS} vetted tokens re-encodes to {len(got)} "
                       "tokens: this tokenizer does not split at spaces, so exact prompt lengths "
                       "cannot be guaranteed (omit --tokenizer for word-per-token prompts)",
                       key="--tokenizer", value=spec)
    return vocab


# -- prompts ---------------------------------------------------------------------------------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-spread hash of int64 keys."""
    z = np.asarray(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _digits(value: np.ndarray, d: np.ndarray, width: int, base: int) -> np.ndarray:
    """Base-``base`` digits of ``value``, most significant first, in a row's first ``d``
    columns of ``width``; unused columns are -1."""
    out = np.full((len(value), width), -1, np.int64)
    for col in range(width):
        exponent = d - 1 - col
        used = exponent >= 0
        power = np.power(base, np.maximum(exponent, 0), dtype=np.int64)
        out[used, col] = (value[used] // power[used]) % base
    return out


class PromptBuilder:
    """Token sequences (indices into a vocabulary of ``size`` entries) per request.

    ``size`` is the vetted vocabulary (HTTP prompts) or a model's vocab_size (resident models
    take the indices as token ids). Call :meth:`plan` with the trace's columns to make the
    first-token guarantee exact; without it first tokens are hashed (module docstring).
    """

    def __init__(self, size: int, *, block_tokens: int | None = None, seed: int = 0) -> None:
        if size < 2:
            raise ValueError("a prompt vocabulary needs at least 2 entries")
        self.size = size
        self.block_tokens = block_tokens
        self.seed = seed
        # Digit value -> vocabulary index: a fixed permutation, so ranks 0, 1, 2 ... do not
        # all start with the same few words.
        self._perm = np.random.default_rng([seed, _TAG_PERM]).permutation(size)
        self._block_ids: np.ndarray | None = None  # sorted unique planned block ids
        self._block_digits: np.ndarray | None = None  # their first-token digits (-1 = unused)
        self._request_ids: np.ndarray | None = None
        self._tail_start: np.ndarray | None = None  # leaf index of each row's item 0
        self._tail_count: np.ndarray | None = None  # leaves (batch items) of each row's tail
        self._tail_digits: np.ndarray | None = None
        self.max_digits = 1
        self.planned = False
        self._new_block_cache()

    def _new_block_cache(self) -> None:
        # A block's run is a function of its id and the plan alone, and traces repeat blocks
        # (that is their point): computed once per id, then looked up (bounded: LRU).
        self._block_cached = functools.lru_cache(maxsize=BLOCK_CACHE)(self._block_run)

    # -- the plan (vectorised over the whole trace) --------------------------------------------
    def plan(self, request_id, seq_len, batch_size, prefix_blocks=None) -> PromptBuilder:
        """Assign first tokens so siblings differ (module docstring). ``prefix_blocks`` is an
        Arrow list array (or None); rows without blocks are children of the empty prefix."""
        import pyarrow as pa
        import pyarrow.compute as pc

        request_id = np.asarray(request_id, np.int64)
        seq_len = np.asarray(seq_len, np.int64)
        batch = np.maximum(np.asarray(batch_size, np.int64), 1)
        n = len(request_id)
        order = np.argsort(request_id, kind="stable")
        if n and np.any(np.diff(request_id[order]) == 0):
            raise ValueError("request ids must be unique")
        if prefix_blocks is None or self.block_tokens is None:
            lengths = np.zeros(n, np.int64)
            values = np.empty(0, np.int64)
        else:
            col = prefix_blocks.combine_chunks() if hasattr(prefix_blocks, "combine_chunks") \
                else prefix_blocks
            col = pc.if_else(pc.is_null(col), pa.scalar([], col.type), col)
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
            values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)))[:-1]
        # block edges: (parent, child) for every block position
        pos_in_list = np.arange(len(values)) - np.repeat(starts, lengths)
        parents = np.where(pos_in_list == 0, _ROOT, np.concatenate(([_ROOT], values[:-1])))
        # tails: one leaf per batch item of each row whose blocks do not cover seq_len
        covered = lengths * (self.block_tokens or 0)
        has_tail = seq_len > covered
        leaves = np.repeat(np.arange(n), np.where(has_tail, batch, 0))
        last = np.where(lengths > 0, values[np.maximum(starts + lengths - 1, 0)]
                        if len(values) else _ROOT, _ROOT)
        tail_parent = last[leaves]
        # edges: kind 0 = block (key = id), kind 1 = tail (key = leaf index)
        e_parent = np.concatenate((parents, tail_parent))
        e_kind = np.concatenate((np.zeros(len(values), np.int8), np.ones(len(leaves), np.int8)))
        e_key = np.concatenate((values, np.arange(len(leaves), dtype=np.int64)))
        idx = np.lexsort((e_key, e_kind, e_parent))
        e_parent, e_kind, e_key = e_parent[idx], e_kind[idx], e_key[idx]
        new = np.ones(len(idx), bool)
        new[1:] = (e_parent[1:] != e_parent[:-1]) | (e_kind[1:] != e_kind[:-1]) \
            | (e_key[1:] != e_key[:-1])
        e_parent, e_kind, e_key = e_parent[new], e_kind[new], e_key[new]
        group_start = np.ones(len(e_parent), bool)
        group_start[1:] = e_parent[1:] != e_parent[:-1]
        gid = np.cumsum(group_start) - 1
        first_of_group = np.flatnonzero(group_start)
        rank = np.arange(len(e_parent)) - first_of_group[gid]
        group_size = np.diff(np.append(first_of_group, len(e_parent)))[gid]
        d = np.ones(len(e_parent), np.int64)
        cap = self.size
        while np.any(group_size > cap):  # digits needed: smallest d with size**d >= siblings
            d += group_size > cap
            cap *= self.size
            if cap > 2**62:
                break
        width = int(d.max()) if len(d) else 1
        modulus = np.array([min(self.size ** int(k), 2**62) for k in range(width + 1)])
        offset = (_mix(e_parent ^ np.int64(self.seed)) % np.uint64(2**62)).astype(np.int64)
        value = (rank + offset % modulus[d]) % modulus[d]
        digits = _digits(value, d, width, self.size)
        # blocks: the first edge of each id (the smallest parent; ids with one parent: exact)
        blocks = e_kind == 0
        b_keys = e_key[blocks]
        b_digits = digits[blocks]
        uniq, first = np.unique(b_keys, return_index=True)
        self._block_ids, self._block_digits = uniq, b_digits[first]
        tails = ~blocks
        t_digits = np.full((len(leaves), width), -1, np.int64)
        t_digits[e_key[tails]] = digits[tails]
        self._tail_digits = t_digits
        self._request_ids = request_id[order]
        leaf_start = np.concatenate(([0], np.cumsum(np.where(has_tail, batch, 0))))[:-1]
        self._tail_start = np.where(has_tail, leaf_start, -1)[order]
        self._tail_count = np.where(has_tail, batch, 0)[order]
        self.max_digits = width
        self.planned = True
        self._new_block_cache()
        return self

    _PLAN_FIELDS = ("block_ids", "block_digits", "request_ids", "tail_start", "tail_count",
                    "tail_digits")

    def export_plan(self, request_ids=None) -> dict[str, Any] | None:
        """The plan as plain arrays, for a worker replaying some rows (``--workers``): every
        planned block, and the tails of ``request_ids`` only (all rows when None). A builder
        that :meth:`load_plan` s it builds exactly the prompts this one builds for them."""
        if not self.planned:
            return None
        out: dict[str, Any] = {"size": self.size, "block_tokens": self.block_tokens,
                               "seed": self.seed, "max_digits": self.max_digits,
                               "block_ids": self._block_ids, "block_digits": self._block_digits}
        if request_ids is None:
            rows = np.arange(len(self._request_ids))
        else:
            ids = np.unique(np.asarray(request_ids, np.int64))
            rows = np.searchsorted(self._request_ids, ids)
            if (rows >= len(self._request_ids)).any() or \
                    (self._request_ids[np.minimum(rows, len(self._request_ids) - 1)]
                     != ids).any():
                raise ValueError("export_plan: a request id is not in the plan")
        count = self._tail_count[rows]
        start = self._tail_start[rows]
        # The selected rows' leaves, in order, renumbered from 0.
        first = np.concatenate(([0], np.cumsum(count)))[:-1]
        leaves = np.repeat(start, count) + (np.arange(int(count.sum())) - np.repeat(first, count))
        out.update(request_ids=self._request_ids[rows], tail_count=count,
                   tail_start=np.where(count > 0, first, -1),
                   tail_digits=self._tail_digits[leaves])
        return out

    def load_plan(self, plan: dict[str, Any]) -> PromptBuilder:
        """Take a plan made by :meth:`export_plan` (of a builder with the same vocabulary size,
        block size and seed) instead of planning over the rows this builder sees."""
        mine = (self.size, self.block_tokens, self.seed)
        theirs = (plan["size"], plan["block_tokens"], plan["seed"])
        if mine != theirs:
            raise ValueError(f"prompt plan made for (size, block_tokens, seed) = {theirs}, "
                             f"not {mine}")
        for name in self._PLAN_FIELDS:
            setattr(self, f"_{name}", np.asarray(plan[name]))
        self.max_digits = int(plan["max_digits"])
        self.planned = True
        self._new_block_cache()
        return self

    def plan_table(self, table) -> PromptBuilder:
        """:meth:`plan` from a trace table."""
        blocks = table.column("prefix_blocks") if "prefix_blocks" in table.column_names \
            else None
        return self.plan(table.column("request_id").to_numpy(),
                         table.column("seq_len").to_numpy(),
                         table.column("batch_size").to_numpy(), blocks)

    # -- token runs (counter-based: a hash of (key, position), no generator per block) --------
    def _draw(self, key: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Pseudo-random vocabulary indices for (key, position) pairs: splitmix64 of splitmix64
        of the key plus the position; the modulo bias (< V / 2^64) is negligible."""
        with np.errstate(over="ignore"):
            z = _mix(_mix(key.astype(np.uint64)) + position.astype(np.uint64))
        return (z % np.uint64(self.size)).astype(np.int64)

    def _key(self, tag: int, *parts: int) -> np.uint64:
        with np.errstate(over="ignore"):
            z = _mix(np.array([self.seed ^ tag], np.uint64))
            for part in parts:
                z = _mix(z ^ np.array([part & 0xFFFFFFFFFFFFFFFF], np.uint64))
        return z

    def tokens(self, request_id: int, seq_len: int, prefix_blocks=None,
               item: int = 0) -> np.ndarray:
        """Exactly ``seq_len`` vocabulary indices: the blocks' runs (cut to ``seq_len``), then
        the request's own tail."""
        runs, cut = self.prefix_runs(seq_len, prefix_blocks)
        if cut is not None:
            runs[-1] = runs[-1][:cut]
        covered = sum(len(r) for r in runs)
        return np.concatenate([*runs, self.tail(request_id, seq_len - covered, item)]) \
            if runs else self.tail(request_id, seq_len, item)

    def prefix_runs(self, seq_len: int, prefix_blocks=None) -> tuple[list[np.ndarray], int | None]:
        """The block runs a ``seq_len`` prompt starts with (cached, read-only arrays), and how
        many tokens of the last one it keeps (None: all of them)."""
        b = self.block_tokens or 0
        if prefix_blocks is None or not b or seq_len <= 0:
            return [], None
        nb = min(len(prefix_blocks), -(-seq_len // b))
        runs = [self._block_cached(int(x)) for x in prefix_blocks[:nb]]
        rest = seq_len - (nb - 1) * b
        return runs, (rest if nb and rest < b else None)

    def _block_run(self, block_id: int) -> np.ndarray:
        """Block ``block_id``'s ``block_tokens`` indices: hashed, with its planned first-token
        digits (if any) written over its first tokens."""
        b = self.block_tokens
        with np.errstate(over="ignore"):
            key = np.uint64(block_id & 0xFFFFFFFFFFFFFFFF) ^ self._key(_TAG_BLOCK)
        out = self._draw(np.repeat(key, b), np.arange(b))
        if self.planned and len(self._block_ids):
            at = int(np.searchsorted(self._block_ids, block_id))
            if at < len(self._block_ids) and self._block_ids[at] == block_id:
                digits = self._block_digits[at][:b]
                used = np.flatnonzero(digits >= 0)
                out[used] = self._perm[digits[used]]
        out.flags.writeable = False  # shared by every prompt that uses the block
        return out

    def tail(self, request_id: int, n: int, item: int = 0) -> np.ndarray:
        """The ``n`` tokens after the blocks: the request's own stream (batch item ``item``),
        its first tokens the planned digits."""
        if n <= 0:
            return np.empty(0, np.int64)
        out = self._draw(np.repeat(self._key(_TAG_TAIL, request_id, item), n), np.arange(n))
        if self.planned:
            i = int(np.searchsorted(self._request_ids, request_id))
            if i < len(self._request_ids) and self._request_ids[i] == request_id \
                    and self._tail_start[i] >= 0:
                digits = self._tail_digits[self._tail_start[i] + item]
                head = self._perm[digits[digits >= 0]][:n]
                out[:len(head)] = head
        return out


class PromptTexts:
    """Prompt text per request for the HTTP backend: a vocabulary plus a builder."""

    def __init__(self, vocab: Vocab, *, block_tokens: int | None = None, seed: int = 0) -> None:
        self.vocab = vocab
        self.builder = PromptBuilder(vocab.size, block_tokens=block_tokens, seed=seed)
        # id(run) -> (run, its text): runs are the builder's cached arrays, kept alive here
        self._block_texts: dict[int, tuple[np.ndarray, str]] = {}

    def text(self, request_id: int, seq_len: int, prefix_blocks=None, item: int = 0) -> str:
        """The prompt: the pieces of :meth:`PromptBuilder.tokens`, joined (~40 µs per 1,000
        tokens; built inside ``submit``, so it counts in the request's latency). Whole blocks'
        texts are cached beside the builder's block runs."""
        pieces = self.vocab.pieces
        runs, cut = self.builder.prefix_runs(seq_len, prefix_blocks)
        parts = []
        covered = 0
        for k, run in enumerate(runs):
            if cut is not None and k == len(runs) - 1:
                parts.append("".join(pieces[run[:cut]].tolist()))
                covered += cut
                break
            parts.append(self._block_text(run))
            covered += len(run)
        tail = self.builder.tail(request_id, seq_len - covered, item)
        parts.append("".join(pieces[tail].tolist()))
        return "".join(parts)

    def _block_text(self, run: np.ndarray) -> str:
        key = id(run)
        text = self._block_texts.get(key)
        if text is None or text[0] is not run:
            if len(self._block_texts) >= BLOCK_CACHE:
                self._block_texts.clear()
            text = self._block_texts[key] = (run, "".join(self.vocab.pieces[run].tolist()))
        return text[1]

    def describe(self) -> dict[str, Any]:
        return {**self.vocab.describe(), "prefix_block_tokens": self.builder.block_tokens,
                "planned": self.builder.planned, "max_divergence_tokens":
                    self.builder.max_digits if self.builder.planned else None}


def model_token_ids(vocab_size: int, request_ids, seq_len: int, *, batch_sizes=None,
                    prefix_blocks=None, block_tokens: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Token ids for a resident model (no tokenizer: ids in ``[0, vocab_size)``), one row per
    batch item of each request, ``seq_len`` each: unique per request (seeded by its id) and
    identical over equal prefix blocks, exactly as the HTTP prompts (unplanned first tokens)."""
    builder = PromptBuilder(vocab_size, block_tokens=block_tokens, seed=seed)
    batch_sizes = [1] * len(request_ids) if batch_sizes is None else batch_sizes
    blocks = [None] * len(request_ids) if prefix_blocks is None else prefix_blocks
    rows = [builder.tokens(int(r), seq_len, b, item)
            for r, n, b in zip(request_ids, batch_sizes, blocks, strict=True)
            for item in range(int(n))]
    return np.stack(rows) if rows else np.empty((0, seq_len), np.int64)
