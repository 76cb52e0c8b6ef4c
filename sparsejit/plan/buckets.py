"""Buckets: the (batch, sequence) shapes an engine compiles, and which one a call runs in.

A bucket list is either the cross product of batch sizes and sequence lengths, an explicit list of
pairs, or the pairs a token budget allows (`token_budget_buckets`: for each sequence length every power
of two up to ``max_batch_tokens // length`` rows, so a batch pads to at most twice its rows). A call
runs in the fitting bucket with the fewest padded positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparsejit.errors import BatchTooLargeError, InvalidInputError, SequenceTooLongError, ShapeError
from sparsejit.graph.ir import Value

__all__ = ["BATCH", "SEQ", "Bucket", "choose_bucket", "input_roles", "make_buckets", "max_batch_for",
           "token_budget_buckets"]

BATCH, SEQ = "batch", "sequence"


@dataclass(frozen=True)
class Bucket:
    """One compiled shape: batch size, sequence length (None when inputs have no sequence axis)."""

    batch: int
    sequence: int | None


def input_roles(inputs: list[Value]) -> dict[str, tuple[str | None, ...]]:
    """Axis 0 is the batch axis and axis 1 the sequence axis when the model leaves them dynamic."""
    roles = {}
    for v in inputs:
        if v.shape is None:
            raise ShapeError(f"model input {v.name!r} has no declared rank; pass input_shapes=")
        axis_roles: list[str | None] = []
        for axis, dim in enumerate(v.shape):
            if isinstance(dim, int):
                axis_roles.append(None)
            elif axis == 0:
                axis_roles.append(BATCH)
            elif axis == 1:
                axis_roles.append(SEQ)
            else:
                raise ShapeError(f"input {v.name!r} has a dynamic axis {axis} ({dim!r}) that is neither "
                                 f"batch nor sequence; pass input_shapes=")
        roles[v.name] = tuple(axis_roles)
    return roles


def token_budget_buckets(sequence_lengths: Sequence[int], max_batch_tokens: int) -> list[tuple[int, int]]:
    """(batch, sequence) pairs whose padded size stays within ``max_batch_tokens``: per sequence length,
    batches 1, 2, 4, ... and ``max_batch_tokens // length`` itself."""
    pairs = []
    for length in sorted({int(s) for s in sequence_lengths}):
        top = int(max_batch_tokens) // length
        if top < 1:
            raise InvalidInputError(f"max_batch_tokens {max_batch_tokens} is smaller than the sequence length "
                                    f"{length}: it must hold at least one row of the longest bucket")
        batches = {top} | {1 << k for k in range(top.bit_length()) if 1 << k <= top}
        pairs += [(b, length) for b in sorted(batches)]
    return pairs


def make_buckets(inputs: list[Value], roles: dict[str, tuple[str | None, ...]],
                 batch_size: int | Sequence[int] | None, sequence_length: int | Sequence[int] | None,
                 pairs: Sequence[tuple[int, int]] | None = None) -> list[Bucket]:
    """The buckets to compile, smallest sequence first, then smallest batch: ``pairs`` as given, else every
    batch size with every sequence length."""
    has_batch = any(BATCH in r for r in roles.values())
    has_seq = any(SEQ in r for r in roles.values())
    if pairs is not None:
        if batch_size is not None or sequence_length is not None:
            raise ShapeError("give either buckets= or batch_size= / sequence_length=, not both")
        buckets = sorted({Bucket(int(b), int(s) if has_seq else None) for b, s in pairs},
                         key=lambda b: (b.sequence or 0, b.batch))
        if not buckets or any(b.batch < 1 or (b.sequence is not None and b.sequence < 1) for b in buckets):
            raise ShapeError(f"buckets must be (batch >= 1, sequence >= 1) pairs, got {list(pairs)}")
        return buckets
    fixed_batch = {v.shape[0] for v in inputs if v.shape and isinstance(v.shape[0], int)}
    if batch_size is None:
        batch_size = next(iter(fixed_batch)) if (fixed_batch and not has_batch) else 1
    batches = sorted({int(b) for b in ([batch_size] if isinstance(batch_size, int | np.integer) else batch_size)})
    if not batches or batches[0] < 1:
        raise ShapeError(f"batch_size must be ≥ 1, got {batch_size}")
    if not has_seq:
        return [Bucket(b, None) for b in batches]
    if sequence_length is None:
        sequence_length = [128]
    elif isinstance(sequence_length, int | np.integer):
        sequence_length = [int(sequence_length)]
    lengths = sorted({int(s) for s in sequence_length})
    if not lengths or lengths[0] < 1:
        raise ShapeError(f"sequence lengths must be ≥ 1, got {sequence_length}")
    return [Bucket(b, s) for s in lengths for b in batches]


def _fitting_sequence(buckets: Sequence[Bucket], seq: int) -> int:
    fitting = [b.sequence for b in buckets if b.sequence is not None and b.sequence >= seq]
    if not fitting:
        longest = max(b.sequence for b in buckets if b.sequence is not None)
        raise SequenceTooLongError(f"sequence length {seq} exceeds the largest bucket {longest}: truncate the "
                                   f"input or compile with a larger sequence_length")
    return min(fitting)


def max_batch_for(buckets: Sequence[Bucket], seq: int | None) -> int:
    """The most rows one call of sequence length ``seq`` may carry: the largest batch compiled for the
    smallest sequence bucket that holds ``seq``."""
    if seq is None or all(b.sequence is None for b in buckets):
        return max(b.batch for b in buckets)
    length = _fitting_sequence(buckets, seq)
    return max(b.batch for b in buckets if b.sequence == length)


def choose_bucket(buckets: Sequence[Bucket], batch: int | None, seq: int | None) -> Bucket:
    """The bucket a call of ``batch`` rows and ``seq`` positions runs in: the smallest sequence length
    that holds it, then the smallest batch that does."""
    if batch is not None and batch < 1:
        raise InvalidInputError("empty batch: give at least one row")
    same_length = list(buckets)
    if seq is not None and any(b.sequence is not None for b in buckets):
        length = _fitting_sequence(buckets, seq)
        same_length = [b for b in buckets if b.sequence == length]
    if batch is None:
        return min(same_length, key=lambda b: b.batch)
    fitting = [b for b in same_length if b.batch >= batch]
    if not fitting:
        top = max(b.batch for b in same_length)
        where = f" at sequence length {same_length[0].sequence}" if same_length[0].sequence is not None else ""
        raise BatchTooLargeError(f"batch of {batch} is larger than the engine's batch size {top}{where}: split "
                                 f"it, or compile with batch_size={batch}")
    return min(fitting, key=lambda b: b.batch)
