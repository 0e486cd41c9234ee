"""Shape buckets: the few shapes a resident model actually runs, so every shape can be warm.

A serving system does not run every request at its own shape: it pads the sequence up to one
of a few *buckets* (and, with dynamic batching, the batch up to a bucket too), warms each
bucket before it takes traffic, and so never pays a first-shape cost (kernel selection, CUDA
graph capture) on a request. Here:

* **seq_len** is padded up to the smallest bucket >= it. Default buckets: powers of two from 16
  up to the model's ``max_positions`` (the last bucket is ``max_positions`` itself when that is
  not a power of two). Vision models take the image side as ``seq_len``; their default is the
  exact side (no bucketing), and explicit buckets synthesise the image at the bucket's side.
* **batch_size** is padded up to a power of two only when dynamic batching is on
  (``--max-batch > 1``); otherwise it is the request's own.
* **max_new_tokens** (decoders) is *not* padded: exactly the requested tokens are generated.
  Its bucket (a power of two >= 16) only sizes the static KV cache: context = seq bucket + new
  bucket, capped at the model's positions.

Pure Python (no torch): the backend, the simulator and ``traceforge profile`` share it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from traceforge.errors import BadInput

SMALLEST_SEQ_BUCKET = 16
SMALLEST_NEW_BUCKET = 16
MAX_SEQ_BUCKET = 1 << 20  # a bucket beyond this many tokens fits no model of the zoo


@dataclass(frozen=True, slots=True, order=True)
class Bucket:
    """What one execution runs: padded batch, padded seq_len and the KV-cache room for new
    tokens (``new_cap`` >= the request's max_new_tokens; 0 for non-generative runs)."""

    batch: int
    seq: int
    new_cap: int = 0

    def label(self) -> str:
        return f"b{self.batch}s{self.seq}" + (f"n{self.new_cap}" if self.new_cap else "")


def pow2_at_least(n: int, floor: int = 1) -> int:
    p = max(1, floor)
    while p < n:
        p <<= 1
    return p


def default_seq_buckets(max_len: int | None, smallest: int = SMALLEST_SEQ_BUCKET) -> list[int]:
    """Powers of two from ``smallest`` up to ``max_len`` (and ``max_len`` itself last)."""
    if not max_len:
        return []
    out = []
    b = smallest
    while b < max_len:
        out.append(b)
        b <<= 1
    out.append(max_len)
    return out


def parse_buckets(text: str | Iterable[int] | None, *, key: str = "--seq-buckets",
                  source: object = None) -> list[int] | None:
    """``"16,32,64"`` or a list → increasing positive ints; None/"" → None (use defaults)."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise BadInput("must be comma-separated integers", source=source, key=key,
                           value=text) from None
    else:
        values = list(text)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise BadInput("must be a list of integers", source=source, key=key, value=values)
    if not values or any(v < 1 for v in values) or sorted(set(values)) != values:
        raise BadInput("must be increasing integers >= 1", source=source, key=key,
                       value=text if isinstance(text, str) else values)
    if values[-1] > MAX_SEQ_BUCKET:  # the trace's seq_len is int32; no model takes more
        raise BadInput(f"must be <= {MAX_SEQ_BUCKET}", source=source, key=key,
                       value=text if isinstance(text, str) else values)
    return values


def smallest_at_least(value: int, buckets: list[int]) -> int | None:
    for b in buckets:
        if b >= value:
            return b
    return None


@dataclass(frozen=True)
class BucketPolicy:
    """How one model maps request shapes to buckets.

    ``seq_buckets`` None = the exact seq_len (no padding); ``batch_buckets`` True pads the
    batch to a power of two (dynamic batching on); ``max_positions`` caps seq + new tokens.
    """

    kind: str  # encoder | decoder | vision
    seq_buckets: tuple[int, ...] | None
    batch_buckets: bool = False
    max_positions: int | None = None

    @classmethod
    def for_entry(cls, entry, seq_buckets: list[int] | None = None,
                  batch_buckets: bool = False) -> BucketPolicy:
        if seq_buckets is None and entry.kind != "vision":
            seq_buckets = default_seq_buckets(entry.max_positions)
        elif seq_buckets is not None and entry.kind != "vision" and entry.max_positions:
            # A shared --seq-buckets list may go beyond this model's positions: those buckets
            # become the model's last position (a longer request is an error row anyway).
            keep = [b for b in seq_buckets if b < entry.max_positions]
            if len(keep) < len(seq_buckets):
                keep.append(entry.max_positions)
            seq_buckets = keep
        return cls(kind=entry.kind, seq_buckets=None if seq_buckets is None
                   else tuple(seq_buckets), batch_buckets=batch_buckets,
                   max_positions=entry.max_positions)

    def bucket(self, batch_size: int, seq_len: int, max_new_tokens: int) -> Bucket:
        """The bucket a request runs in; ValueError (an error row) when none fits."""
        seq = seq_len
        if self.seq_buckets is not None:
            found = smallest_at_least(seq_len, list(self.seq_buckets))
            if found is None:
                raise ValueError(f"seq_len={seq_len} > the largest bucket "
                                 f"{self.seq_buckets[-1]} (--seq-buckets)")
            seq = found
        batch = pow2_at_least(batch_size) if self.batch_buckets else batch_size
        new_cap = 0
        if self.kind == "decoder" and max_new_tokens > 0:
            new_cap = pow2_at_least(max_new_tokens, SMALLEST_NEW_BUCKET)
            if self.max_positions:
                room = self.max_positions - max_new_tokens
                if seq > room:
                    # The padded prompt leaves too little room for the new tokens: pad only as
                    # far as the positions allow (the request itself fits: check_shape).
                    if seq_len > room:
                        raise ValueError(f"seq_len {seq_len} + max_new_tokens "
                                         f"{max_new_tokens} > {self.max_positions} positions")
                    seq = room
                new_cap = min(new_cap, self.max_positions - seq)
        return Bucket(batch, seq, new_cap)

    def buckets_for(self, shapes: Iterable[tuple[int, int, int]], max_batch: int = 1
                    ) -> list[Bucket]:
        """Every bucket a worker can be asked to run for requests of ``shapes``.

        Without batching: each shape's own bucket. With batching (``max_batch`` > 1), a batch
        sums up to ``max_batch`` requests' batch sizes and takes the longest seq_len and
        max_new_tokens of its members: every batch bucket from the smallest request's up to
        ``max_batch`` x the largest, crossed with every seq bucket and new-token bucket seen.
        Shapes no bucket fits are left out (they become error rows).
        """
        shapes = list(shapes)
        out: set[Bucket] = set()
        for b, s, n in shapes:
            try:
                out.add(self.bucket(b, s, n))
            except ValueError:
                continue
        if max_batch > 1 and out:
            seqs = sorted({k.seq for k in out})
            news = sorted({n for _, _, n in shapes})
            top = pow2_at_least(max_batch * max(b for b, _, _ in shapes))
            batches = []
            p = min(k.batch for k in out)
            while p <= top:
                batches.append(p)
                p <<= 1
            for b in batches:
                for s in seqs:
                    for n in news:
                        try:
                            out.add(self.bucket(b, s, n))
                        except ValueError:
                            continue
        return sorted(out)
