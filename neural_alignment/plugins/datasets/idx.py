"""Reading IDX files (the MNIST format), gzipped or not, with numpy.

Layout: two zero bytes, a type byte, the number of dimensions n, then n big-endian uint32
sizes, then the values in C order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from neural_alignment.core.errors import UserError

IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (``.gz`` files are decompressed)."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"IDX file {path} is truncated in its header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[data[2]])
    count = math.prod(dims)
    if len(data) != header + count * dtype.itemsize:
        raise UserError(
            f"IDX file {path} holds {len(data) - header} data bytes, "
            f"its header {dims} promises {count * dtype.itemsize}"
        )
    return np.frombuffer(bytearray(data), dtype, count, offset=header).reshape(dims)
