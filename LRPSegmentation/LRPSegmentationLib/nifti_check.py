"""Is a NIfTI file complete and finite? Checks SimpleITK's reader cannot make.

SimpleITK reads a truncated ``.nii``/``.nii.gz`` (missing voxels become 0), a gzip stream with a
bad CRC, and NaN/Inf floats (niftilib replaces them by 0) without a word; `check_nifti_data`
streams the file once and refuses each. Standard library + numpy; used by ``imaging.read_image``.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["check_nifti_data"]

# NIfTI datatype codes of floating-point voxels → numpy dtype of one float in them (complex types
# are pairs of floats). SimpleITK's NIfTI reader (niftilib's nifti_read_buffer) silently replaces
# NaN and ±Inf in these by 0, so they are looked for in the file itself.
_NIFTI_FLOAT_TYPES: dict[int, str] = {16: "f4", 32: "f4", 64: "f8", 1792: "f8"}
_CHUNK_BYTES = 1 << 24


def _nifti_layout(header: bytes) -> tuple[str, int, int, int] | None:
    """(byte order, datatype, voxel data offset, voxel data bytes) from a NIfTI-1 or -2 header."""
    for order in "<>":
        header_size = struct.unpack(order + "i", header[:4])[0]
        if header_size == 348 and len(header) >= 348:  # NIfTI-1
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if header_size == 540 and len(header) >= 540:  # NIfTI-2
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    voxels = math.prod(max(int(n), 1) for n in dims[1:1 + min(max(dims[0], 1), 7)])
    return order, datatype, max(offset, header_size), voxels * bitpix // 8


def check_nifti_data(path: Path) -> None:
    """Raise ValueError if a NIfTI file's voxel data is cut short, its gzip stream is corrupt, or
    it holds NaN/Inf floats. SimpleITK reads all three without a word: missing voxels and NaN/Inf
    come back as 0."""
    try:
        with open(path, "rb") as probe:
            compressed = probe.read(2) == b"\x1f\x8b"  # by content, as ITK does: names can lie
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            head = stream.read(540)
            layout = _nifti_layout(head)
            if layout is None:
                return  # not a header this check knows; SimpleITK accepted the file
            order, datatype, offset, expected = layout
            pending = head[offset:]
            stream.read(max(offset - len(head), 0))  # header extensions
            dtype = np.dtype(order + _NIFTI_FLOAT_TYPES[datatype]) if datatype in _NIFTI_FLOAT_TYPES else None
            received = bad = 0
            carry = b""  # bytes of a float split across two chunks
            while received < expected:
                chunk = pending or stream.read(min(expected - received, _CHUNK_BYTES))
                pending = b""
                if not chunk:
                    break
                chunk = chunk[: expected - received]
                received += len(chunk)
                if dtype is not None:
                    data = carry + chunk
                    whole = len(data) // dtype.itemsize * dtype.itemsize
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:whole], dtype))))
                    carry = data[whole:]
            while stream.read(_CHUNK_BYTES):
                pass  # read to the end so gzip checks its CRC and length trailer
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{path}: the file is truncated or corrupt ({error}); export it again") from error
    if received < expected:
        raise ValueError(f"{path}: the file is truncated: it holds {received} of {expected} bytes of "
                         f"voxel data; export or copy it again")
    if bad:
        raise ValueError(f"{path}: {bad} voxels are NaN or infinite; replace them (e.g. by 0) and "
                         f"save the image again")
