"""Masks on disk: one bit per entry, or fewer where the mask's entropy is lower.

A mask keeping a fraction p of its entries carries H(p) = -p log2 p - (1-p) log2 (1-p) bits
of information per entry: 1 at p = 0.5, 0.47 at p = 0.1 (ProPETL-LoRA's sparsity 0.9).
Each mask is stored in whichever of two codings is smaller:

* ``bits``: bit-packed, exactly 1 bit per entry (the paper's accounting);
* ``rice``: the positions of the rarer value (the kept entries when fewer than half are kept)
  as a coded index list: each gap between consecutive positions in a Golomb-Rice code, with
  the parameter k that gives the shortest code for this mask. A top-k mask of scores that do
  not cluster has (nearly) geometric gaps, for which Golomb codes are the optimal prefix codes:
  on a LoRA-sized mask (24,576 entries) at p = 0.1 it takes 0.48 bit per entry (entropy 0.469).
  General-purpose compressors from the standard library, tried on the same packed masks, need
  the first kilobytes to learn the statistics: LZMA 0.53-0.62, zlib and bz2 more. The code is
  short enough to own (numpy, no dependency) and decodes exactly.

Layout of a ``rice`` mask: 1 byte k (bit 7 set: the coded positions are the zeros), 4 bytes
little-endian count of coded positions, then the bit-packed (little bit order) codewords:
q = gap >> k ones, a zero, and the k low bits of the gap, most significant first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

CODINGS = ("bits", "rice")
_MAX_K = 24
_HEADER = 5


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.flatten().cpu().numpy().astype(bool), bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if packed.numel() != (numel + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, expected {(numel + 7) // 8} for shape {shape}")
    bits = np.unpackbits(packed.numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.astype(bool)).view(shape)


def _rice(flat: np.ndarray) -> np.ndarray:
    """The rice coding of a flat bool mask, as uint8 bytes."""
    invert = bool(flat.sum() * 2 > flat.size)
    positions = np.flatnonzero(flat != invert)
    gaps = np.diff(positions, prepend=-1) - 1
    k = min(range(_MAX_K + 1), key=lambda k: int(((gaps >> k) + 1 + k).sum()))
    quotients, remainders = gaps >> k, gaps & ((1 << k) - 1)
    lengths = quotients + 1 + k
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(int(lengths.sum()), dtype=bool)
    run_starts = np.repeat(starts - (np.cumsum(quotients) - quotients), quotients)
    bits[run_starts + np.arange(int(quotients.sum()))] = True  # the unary quotients
    for j in range(k):
        bits[starts + quotients + 1 + j] = (remainders >> (k - 1 - j)) & 1
    header = np.frombuffer(bytes([k | (0x80 if invert else 0)]) + len(positions).to_bytes(4, "little"), dtype=np.uint8)
    return np.concatenate([header, np.packbits(bits, bitorder="little")])


def _unrice(data: np.ndarray, numel: int) -> np.ndarray:
    if data.size < _HEADER:
        raise ValueError(f"packed mask has {data.size} bytes, fewer than the {_HEADER}-byte rice header")
    k, invert, count = int(data[0] & 0x3F), bool(data[0] & 0x80), int.from_bytes(data[1:_HEADER].tobytes(), "little")
    bits = np.unpackbits(data[_HEADER:], bitorder="little").astype(bool)
    # next_zero[i]: the first zero at or after i (each codeword's unary part ends there)
    zero_at = np.where(~bits, np.arange(bits.size), bits.size)
    next_zero = np.minimum.accumulate(zero_at[::-1])[::-1]
    weights = 1 << np.arange(k - 1, -1, -1)
    positions = np.empty(count, dtype=np.int64)
    cursor, position = 0, -1
    for i in range(count):
        end = next_zero[cursor] if cursor < bits.size else bits.size
        if end + 1 + k > bits.size:
            raise ValueError(f"packed mask ends inside codeword {i} of {count}")
        remainder = int(bits[end + 1 : end + 1 + k] @ weights) if k else 0
        position += ((end - cursor) << k) + remainder + 1
        positions[i] = position
        cursor = end + 1 + k
    if count and positions[-1] >= numel:
        raise ValueError(f"packed mask codes position {positions[-1]} beyond its {numel} entries")
    flat = np.full(numel, invert)
    flat[positions] = not invert
    return flat


def encode(mask: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The smaller coding of a 0/1 mask, as (coding, uint8 bytes)."""
    packed = pack_bits(mask)
    coded = _rice(mask.flatten().cpu().numpy().astype(bool))
    if coded.size < packed.numel():
        return "rice", torch.from_numpy(coded)
    return "bits", packed


def decode(coding: str, data: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`encode`: the bool mask of ``shape``."""
    if coding == "bits":
        return unpack_bits(data, shape)
    if coding != "rice":
        raise ValueError(f"mask coding {coding!r} is unknown; known: {', '.join(CODINGS)}")
    return torch.from_numpy(_unrice(data.numpy(), math.prod(shape))).view(shape)


def coded_bits(mask: torch.Tensor) -> int:
    """Bits the mask takes on disk in its smaller coding."""
    return 8 * encode(mask)[1].numel()


def entropy_bits(kept_fraction: float) -> float:
    """H(p) per entry: what no lossless coding of a random mask beats on average."""
    p = kept_fraction
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
