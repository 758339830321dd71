"""Deep Compression storage (Han et al. 2016): pruned weights as relative indices + values,
shared values as cluster codes into a per-layer code book, both streams Huffman-coded.

Pure encoding math; `deep_file.py` writes and reads the file. Relative indices store the gap
to the previous non-zero in `index_bits` bits; a gap too long for that inserts a filler entry
(an explicit zero with its own value symbol), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmcompress.graph import huffman

MAX_SHARED_VALUES = 256


@dataclass
class EncodedTensor:
    """One weight tensor in Deep Compression form (everything needed to rebuild it exactly)."""

    shape: tuple[int, ...]
    kind: str  # "shared": codes into `codebook`; "sparse": raw float32 values
    gaps: np.ndarray  # (m,) relative index symbols in [0, 2^index_bits)
    values: np.ndarray  # (m,) code per entry (shared; code len(codebook) = filler) or float32 values
    codebook: np.ndarray  # (k,) float32 shared values (empty for "sparse")
    index_bits: int

    @property
    def entries(self) -> int:
        return len(self.gaps)


def relative_indices(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps between successive non-zero positions, with fillers for gaps of 2^index_bits or more.

    Returns (gaps, is_filler), one entry per stored element; gap g means "g zeros skipped".

    Example:
        >>> g, f = relative_indices(np.array([1, 3, 12]), 3)   # gaps 1, 1, 8 -> 8 needs a filler
        >>> g.tolist(), f.tolist()
        ([1, 1, 7, 0], [False, False, True, False])
    """
    limit = 2**index_bits - 1
    gaps, fillers = [], []
    previous = -1
    for position in positions.tolist():
        gap = position - previous - 1
        while gap > limit:  # a filler element stands on the position `limit` zeros later
            gaps.append(limit)
            fillers.append(True)
            gap -= limit + 1
        gaps.append(gap)
        fillers.append(False)
        previous = position
    return np.array(gaps, dtype=np.int64), np.array(fillers, dtype=bool)


def positions_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Flat positions of the stored entries (fillers included): inverse of `relative_indices`.

    Example:
        >>> positions_from_gaps(np.array([1, 1, 7, 0])).tolist()
        [1, 3, 11, 12]
    """
    return np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1


def encode_tensor(weight: torch.Tensor, index_bits: int = 5) -> EncodedTensor:
    """Encode the non-zeros of `weight`: shared codes when it holds <= 256 distinct non-zero values
    (after weight sharing), raw float32 values otherwise (pruned only).

    Example:
        >>> enc = encode_tensor(torch.tensor([[0.0, 0.5], [0.5, -0.25]]), index_bits=2)
        >>> enc.kind, enc.codebook.tolist(), enc.values.tolist()
        ('shared', [-0.25, 0.5], [1, 1, 0])
    """
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in 1..16, got {index_bits}")
    flat = weight.detach().float().cpu().flatten().numpy()
    positions = np.flatnonzero(flat)
    gaps, fillers = relative_indices(positions, index_bits)
    nonzero = flat[positions]
    codebook = np.unique(nonzero).astype(np.float32)
    if len(codebook) <= MAX_SHARED_VALUES:
        values = np.full(len(gaps), len(codebook), dtype=np.int64)  # filler symbol = len(codebook)
        values[~fillers] = np.searchsorted(codebook, nonzero)
        return EncodedTensor(tuple(weight.shape), "shared", gaps, values, codebook, index_bits)
    values = np.zeros(len(gaps), dtype=np.float32)
    values[~fillers] = nonzero
    return EncodedTensor(tuple(weight.shape), "sparse", gaps, values, np.zeros(0, np.float32), index_bits)


def decode_tensor(enc: EncodedTensor) -> torch.Tensor:
    """Rebuild the float32 tensor exactly.

    Example:
        >>> w = torch.tensor([[0.0, 0.5], [0.5, -0.25]])
        >>> torch.equal(decode_tensor(encode_tensor(w, 2)), w)
        True
    """
    n = int(np.prod(enc.shape)) if enc.shape else 1
    positions = positions_from_gaps(enc.gaps)
    if len(positions) and positions[-1] >= n:
        raise ValueError(f"relative indices run past the end of a {enc.shape} tensor: corrupted")
    out = np.zeros(n, dtype=np.float32)
    if enc.kind == "shared":
        table = np.concatenate([enc.codebook, np.zeros(1, np.float32)])  # last symbol: filler zero
        if len(enc.values) and enc.values.max() >= len(table):
            raise ValueError("a cluster code points past the code book: corrupted")
        out[positions] = table[enc.values]
    else:
        out[positions] = enc.values
    return torch.from_numpy(out.reshape(enc.shape))


@dataclass
class LayerBits:
    """Storage of one encoded tensor in bits, split as the paper's tables are."""

    entries: int
    value_bits: int  # cluster codes (or float32 values)
    index_bits: int  # relative indices
    codebook_bits: int  # shared values + Huffman code lengths

    @property
    def total(self) -> int:
        return self.value_bits + self.index_bits + self.codebook_bits


def fixed_length_bits(enc: EncodedTensor) -> LayerBits:
    """Bits with fixed-length codes: ceil(log2(k + 1)) per shared code, 32 per raw value.

    Example:
        >>> fixed_length_bits(encode_tensor(torch.tensor([0.0, 1.0, 2.0]), 4)).value_bits  # 2 codes x 1 bit
        2
    """
    if enc.kind == "shared":
        symbols = len(enc.codebook) + int((enc.values == len(enc.codebook)).any())
        per_value = max(1, int(np.ceil(np.log2(max(symbols, 2)))))
        return LayerBits(enc.entries, per_value * enc.entries, enc.index_bits * enc.entries, 32 * len(enc.codebook))
    return LayerBits(enc.entries, 32 * enc.entries, enc.index_bits * enc.entries, 0)


def huffman_streams(enc: EncodedTensor) -> dict[str, tuple[bytes, int, np.ndarray]]:
    """Huffman-code the index stream (and the code stream of shared tensors): name -> (bytes, bits, lengths)."""
    streams = {"index": enc.gaps}
    if enc.kind == "shared":
        streams["value"] = enc.values
    out = {}
    for name, symbols in streams.items():
        alphabet = 2**enc.index_bits if name == "index" else len(enc.codebook) + 1
        lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
        data, bits = huffman.encode(symbols, lengths)
        out[name] = (data, bits, lengths)
    return out


def huffman_bits(enc: EncodedTensor) -> LayerBits:
    """Bits after Huffman coding of both streams (code books: 32-bit values + one length byte per symbol)."""
    streams = huffman_streams(enc)
    index_bits = streams["index"][1]
    book = 8 * len(streams["index"][2])
    if enc.kind == "shared":
        value_bits = streams["value"][1]
        book += 32 * len(enc.codebook) + 8 * len(streams["value"][2])
    else:
        value_bits = 32 * enc.entries
    return LayerBits(enc.entries, value_bits, index_bits, book)
