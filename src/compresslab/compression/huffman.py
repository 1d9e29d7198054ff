"""Deep Compression's storage (Han, Mao, Dally 2016, section 3): sparse positions as relative
indices of a fixed bit width with filler zeros, then canonical Huffman coding of the indices and of
the quantized codes. Pure functions on numpy arrays; the artifact (export.py) stores their output.

- `relative_indices(nz, index_bits)`: for each stored entry, the number of zeros skipped since the
  previous one (at most 2^index_bits - 1); a longer run of zeros gets a *filler* entry, a stored
  zero, as in the paper's figure 2.
- `huffman_lengths(counts)`: optimal code lengths (heapq); `encode` / `decode` with the canonical
  code those lengths define, so a stream stores only the lengths (one byte per symbol), not a tree.
"""

from __future__ import annotations

import heapq

import numpy as np


def relative_indices(nz: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, filler) for the flat bool mask `nz`: entry i sits gaps[i] + 1 positions after the one
    before it; filler[i] marks a filler zero, inserted where a run of zeros is too long for
    `index_bits` (0 bits: every position up to the last nonzero is an entry)."""
    span = 2 ** index_bits  # an entry sits at most this far after the previous one
    g = np.diff(np.concatenate([[-1], np.flatnonzero(nz)])) - 1
    per = g // span + 1  # fillers before each nonzero, and itself
    gaps = np.full(int(per.sum()), span - 1, dtype=np.int64)
    filler = np.ones(gaps.size, dtype=bool)
    own = np.cumsum(per) - 1
    gaps[own] = g % span
    filler[own] = False
    return gaps, filler


def positions_of(gaps: np.ndarray, n: int) -> np.ndarray:
    """Flat positions of the entries (fillers included) that relative indices `gaps` point at."""
    positions = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
    if positions.size and (positions[-1] >= n or gaps.min() < 0):
        raise ValueError("relative indices point past the end of the tensor")
    return positions


def huffman_lengths(counts) -> np.ndarray:
    """Code length of each symbol of an optimal prefix code for `counts` (0 for unused symbols;
    a lone used symbol gets length 1)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol: symbols sorted by (length, symbol), codes counting up."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev_len = 0, 0
    for s in sorted((int(s) for s in np.flatnonzero(lengths)), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev_len
        codes[s] = code
        code += 1
        prev_len = int(lengths[s])
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """The symbols' canonical codes, most significant bit first, packed into bytes."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b""
    codes = canonical_codes(lengths)
    lens, vals = lengths[symbols], codes[symbols]
    owner = np.repeat(np.arange(symbols.size), lens)
    offset = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    bits = (vals[owner] >> (lens[owner] - 1 - offset)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """`count` symbols read back from `encode`'s bytes (ValueError if the bits run out or form no code)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): int(s) for s in np.flatnonzero(lengths)}
    longest = int(lengths.max()) if lengths.size else 0
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    out = np.empty(count, dtype=np.int64)
    i = 0
    for k in range(count):
        code = length = 0
        while True:
            if i >= len(bits) or length >= longest:
                raise ValueError("the Huffman stream ends early or holds a bit pattern that is no code")
            code, length, i = (code << 1) | bits[i], length + 1, i + 1
            s = table.get((length, code))
            if s is not None:
                out[k] = s
                break
    return out


def coded_bits(counts, lengths) -> int:
    """Bits of the Huffman-coded stream with these symbol counts."""
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))
