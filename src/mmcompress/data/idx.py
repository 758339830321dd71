"""Reader for the IDX file format used by (Fashion-)MNIST, with strict checks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mmcompress.errors import DataError

_DTYPES = {0x08: np.uint8}


def read_idx(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    """Read a (gzipped) IDX file and check magic number, dims and payload size.

    A truncated or corrupted file raises DataError; never fewer samples silently.

    Example:
        >>> read_idx(Path("t10k-labels-idx1-ubyte.gz"), (10000,)).shape
        (10000,)
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is unreadable or truncated ({err}); re-download or reinstall it") from None
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _DTYPES or ndim != len(expected_shape):
        raise DataError(f"{path} has a bad IDX magic number; expected {len(expected_shape)}-d uint8 data")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    if tuple(dims) != tuple(expected_shape):
        raise DataError(f"{path} holds shape {tuple(dims)}, expected {tuple(expected_shape)}")
    payload = raw[4 + 4 * ndim :]
    need = int(np.prod(dims))
    if len(payload) != need:
        raise DataError(f"{path} is truncated: {len(payload)} of {need} payload bytes; re-download it")
    return np.frombuffer(payload, dtype=_DTYPES[dtype_code]).reshape(dims).copy()
