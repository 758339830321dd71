"""The Deep Compression file: every weight tensor Huffman-coded (relative indices + cluster codes +
code book), other tensors raw; a JSON header with a SHA-256 of the payload, so a corrupted or
truncated file is an error, never a partial model.

Layout: b"MMDC1\\n", header length (8 bytes, little endian), JSON header, payload.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from mmcompress.core.io import atomic_write_bytes, json_digest
from mmcompress.errors import ConfigError, DataError
from mmcompress.graph import huffman
from mmcompress.graph.deep_compression import EncodedTensor, decode_tensor, encode_tensor, huffman_streams

MAGIC = b"MMDC1\n"


def _is_weight(name: str, tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.dim() >= 2 and name.endswith("weight")


def save_deep(model: nn.Module, path: str | Path, index_bits: int = 5, conv_index_bits: int = 8) -> dict[str, int]:
    """Write `model`'s state in Deep Compression form; returns bytes per part (header, values,
    indices, code books, other).

    Args:
        model: its weights should already be pruned and shared (`share_weights` + fuse); any
            weight is stored exactly, shared or not.
        index_bits / conv_index_bits: relative-index width for Linear / convolution weights
            (the paper used 5 and 8).

    Example:
        >>> save_deep(lenet, "lenet.mmdc")["total"]
    """
    unfused = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if unfused:
        raise ConfigError(
            f"save_deep: {len(unfused)} layer(s) still share weights through trainable centroids "
            f"({unfused[0]!r}, ...); call fuse_shared_weights(model) first, so the file holds the fine-tuned values"
        )
    header: dict = {"tensors": {}}
    chunks: list[bytes] = []
    parts = {"values": 0, "indices": 0, "codebooks": 0, "other": 0}
    offset = 0

    def add(data: bytes, part: str) -> list[int]:
        nonlocal offset
        chunks.append(data)
        parts[part] += len(data)
        offset += len(data)
        return [offset - len(data), len(data)]

    for name, tensor in model.state_dict().items():
        if _is_weight(name, tensor):
            bits = conv_index_bits if tensor.dim() > 2 else index_bits
            enc = encode_tensor(tensor, bits)
            streams = huffman_streams(enc)
            info = {"kind": enc.kind, "shape": list(enc.shape), "index_bits": bits, "entries": enc.entries}
            data, n_bits, lengths = streams["index"]
            info["index"] = {"at": add(data, "indices"), "bits": n_bits, "lengths": lengths.tolist()}
            if enc.kind == "shared":
                data, n_bits, lengths = streams["value"]
                info["value"] = {"at": add(data, "values"), "bits": n_bits, "lengths": lengths.tolist()}
                info["codebook"] = add(enc.codebook.astype("<f4").tobytes(), "codebooks")
            else:
                info["value"] = {"at": add(enc.values.astype("<f4").tobytes(), "values")}
        else:
            array = tensor.detach().cpu().contiguous()
            info = {"kind": "raw", "shape": list(array.shape), "dtype": str(array.dtype).removeprefix("torch.")}
            info["at"] = add(array.numpy().tobytes(), "other")
        header["tensors"][name] = info
    payload = b"".join(chunks)
    header["sha256"] = hashlib.sha256(payload).hexdigest()
    header["payload_bytes"] = len(payload)
    header["header_sha256"] = json_digest(header, "header_sha256")
    head = json.dumps(header, separators=(",", ":")).encode()
    atomic_write_bytes(path, MAGIC + struct.pack("<Q", len(head)) + head + payload)
    parts["header"] = len(MAGIC) + 8 + len(head)
    parts["total"] = sum(parts.values())
    return parts


def load_deep(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Deep Compression file back into a state dict (bit-exact); checks magic, lengths and
    the payload checksum first.

    Example:
        >>> lenet.load_state_dict(load_deep("lenet.mmdc"))
    """
    try:
        blob = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read Deep Compression file {path} ({err.strerror})") from None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
        raise DataError(f"{path} is not a Deep Compression file (bad magic)")
    (head_len,) = struct.unpack("<Q", blob[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(blob[start : start + head_len])
    except ValueError:
        raise DataError(f"{path}: header is unreadable (truncated or corrupted)") from None
    if not isinstance(header, dict) or header.get("header_sha256") != json_digest(header, "header_sha256"):
        raise DataError(f"{path}: header checksum mismatch (corrupted)")
    payload = blob[start + head_len :]
    if len(payload) != header.get("payload_bytes"):
        raise DataError(
            f"{path}: payload is {len(payload)} bytes, header says {header.get('payload_bytes')}: truncated"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise DataError(f"{path}: payload checksum mismatch (corrupted)")
    return {name: _decode(payload, info) for name, info in header["tensors"].items()}


def _slice(payload: bytes, at: list[int]) -> bytes:
    return payload[at[0] : at[0] + at[1]]


def _decode(payload: bytes, info: dict) -> torch.Tensor:
    if info["kind"] == "raw":
        data = bytearray(_slice(payload, info["at"]))
        dtype = getattr(torch, info["dtype"])
        return (torch.frombuffer(data, dtype=dtype) if data else torch.zeros(0, dtype=dtype)).reshape(info["shape"])
    index = info["index"]
    gaps = huffman.decode(_slice(payload, index["at"]), index["bits"], info["entries"], np.array(index["lengths"]))
    value = info["value"]
    if info["kind"] == "shared":
        codebook = np.frombuffer(_slice(payload, info["codebook"]), dtype="<f4")
        values = huffman.decode(
            _slice(payload, value["at"]), value["bits"], info["entries"], np.array(value["lengths"])
        )
    else:
        codebook, values = np.zeros(0, np.float32), np.frombuffer(_slice(payload, value["at"]), dtype="<f4")
    enc = EncodedTensor(tuple(info["shape"]), info["kind"], gaps, values, codebook, info["index_bits"])
    return decode_tensor(enc)
