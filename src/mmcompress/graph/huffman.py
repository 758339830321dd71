"""Canonical Huffman coding of small-alphabet symbol streams (pure math on numpy arrays).

A code is stored as one length per symbol (canonical form), so the code book costs
`alphabet` bytes; the bit stream is packed MSB-first.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_CODE_BITS = 32


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol from symbol counts: (A,) int -> (A,) uint8 (0: unused symbol).

    Example:
        >>> code_lengths(np.array([5, 1, 1, 0])).tolist()
        [1, 2, 2, 0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    if lengths.max() > MAX_CODE_BITS:
        raise ValueError(f"Huffman code longer than {MAX_CODE_BITS} bits; too many rare symbols")
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code words (as integers) for code lengths: shorter codes first, then by symbol.

    Example:
        >>> canonical_codes(np.array([1, 2, 2, 0])).tolist()
        [0, 2, 3, 0]
    """
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Bit-pack `symbols` with the canonical code of `lengths`: -> (bytes, number of bits).

    Example:
        >>> data, bits = encode(np.array([0, 0, 1, 2]), np.array([1, 2, 2]))
        >>> bits
        6
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= len(lengths) or (lengths[symbols] == 0).any()):
        raise ValueError("a symbol has no Huffman code")
    codes = canonical_codes(lengths)
    lens = lengths[symbols].astype(np.int64)
    total = int(lens.sum())
    bits = np.zeros(total, dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if symbols.size else np.zeros(0, dtype=np.int64)
    for length in np.unique(lens):  # all symbols of one code length at once, bit by bit
        sel = lens == length
        words, at = codes[symbols[sel]], starts[sel]
        for b in range(int(length)):
            bits[at + b] = (words >> (int(length) - 1 - b)) & 1
    return np.packbits(bits).tobytes(), total


def decode(data: bytes, n_bits: int, count: int, lengths: np.ndarray) -> np.ndarray:
    """Inverse of `encode`: `count` symbols from the first `n_bits` bits of `data`.

    Example:
        >>> data, bits = encode(np.array([0, 0, 1, 2]), np.array([1, 2, 2]))
        >>> decode(data, bits, 4, np.array([1, 2, 2])).tolist()
        [0, 0, 1, 2]
    """
    if n_bits > 8 * len(data):
        raise ValueError(f"Huffman stream is truncated: {8 * len(data)} bits stored, {n_bits} needed")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_bits)
    codes = canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in np.flatnonzero(lengths)}
    out = np.empty(count, dtype=np.int64)
    code = length = n = 0
    for bit in bits.tolist():
        code, length = (code << 1) | bit, length + 1
        symbol = table.get((length, code))
        if symbol is not None:
            if n == count:
                raise ValueError("Huffman stream holds more symbols than recorded")
            out[n], n, code, length = symbol, n + 1, 0, 0
    if n != count or length:
        raise ValueError(f"Huffman stream decodes to {n} symbols, {count} recorded: corrupted")
    return out
