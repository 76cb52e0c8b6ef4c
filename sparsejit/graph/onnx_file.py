"""Read an ONNX file without holding its weights twice.

`onnx.load` reads the whole file into one bytes object and parses it into a protobuf that keeps every
initializer's bytes; converting those to numpy arrays then makes a third copy while the protobuf is
still alive, so loading a model costs about twice its size at its peak. Here the file is memory-mapped
and walked in protobuf's wire format: the large `raw_data` fields of the main graph's initializers are
left out of the message that gets parsed, their places in the file recorded as `WeightSpan`s, and each
is read into its own array by `read_span` (one copy, one tensor at a time).

Anything unusual (groups, segmented tensors, a malformed file) makes `read_model_file` return None, and
the caller loads the file the ordinary way, which also reports what is wrong with it.
"""

from __future__ import annotations

import mmap
import sys
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from sparsejit.errors import ModelLoadError

# ModelProto.graph, GraphProto.initializer, TensorProto.{dims, data_type, segment, raw_data, data_location}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_DATA_TYPE, _T_SEGMENT, _T_RAW_DATA, _T_DATA_LOCATION = 1, 2, 3, 9, 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
MIN_SPAN_BYTES = 4096  # smaller tensors stay in the message: not worth a read of their own

_RAW_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
               onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT8: np.int8,
               onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT16: np.int16,
               onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32,
               onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_}


class _Unusual(Exception):
    """The file is not in the plain form this reader handles: load it the ordinary way."""


@dataclass(frozen=True)
class WeightSpan:
    """Where an initializer's raw little-endian bytes lie in the model file."""

    path: str
    offset: int
    length: int
    dtype: np.dtype
    dims: tuple[int, ...]


def read_span(span: WeightSpan) -> np.ndarray:
    """The initializer's array, read straight from the file."""
    count = int(np.prod(span.dims)) if span.dims else 1
    if count * span.dtype.itemsize != span.length:
        raise ModelLoadError(f"{span.path!r}: an initializer of shape {list(span.dims)} holds {span.length} bytes, "
                             f"not {count * span.dtype.itemsize}: the file is corrupt; re-export it")
    return np.fromfile(span.path, dtype=span.dtype, count=count, offset=span.offset).reshape(span.dims)


def read_model_file(path: str) -> tuple[onnx.ModelProto, dict[int, WeightSpan]] | None:
    """(the model without the bytes of its large initializers, {index in graph.initializer: span}),
    or None when the file should be loaded by `onnx.load`."""
    if sys.byteorder != "little":
        return None
    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return None
    try:
        spans: dict[int, WeightSpan] = {}
        stripped = _rewrite_model(mm, path, spans)
        model = onnx.ModelProto.FromString(stripped)
    except (_Unusual, DecodeError):  # onnx.load then says what is wrong, if anything is
        return None
    finally:
        mm.close()
    return model, spans


def _varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Unusual
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: mmap.mmap, start: int, end: int):  # type: ignore[no-untyped-def]
    """(field number, wire type, field start, value start, value end) of each field in [start, end)."""
    pos = start
    while pos < end:
        key, value_start = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, value_end = _varint(buf, value_start, end)
        elif wire == _I64:
            value_end = value_start + 8
        elif wire == _I32:
            value_end = value_start + 4
        elif wire == _LEN:
            length, value_start = _varint(buf, value_start, end)
            value_end = value_start + length
        else:  # groups
            raise _Unusual
        if value_end > end:
            raise _Unusual
        yield field, wire, pos, value_start, value_end
        pos = value_end


def _length_field(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _rewrite_model(buf: mmap.mmap, path: str, spans: dict[int, WeightSpan]) -> bytes:
    out = bytearray()
    for field, wire, start, v0, v1 in _fields(buf, 0, len(buf)):
        if field == _MODEL_GRAPH and wire == _LEN:
            out += _length_field(field, _rewrite_graph(buf, v0, v1, path, spans))
        else:
            out += buf[start:v1]
    return bytes(out)


def _rewrite_graph(buf: mmap.mmap, start: int, end: int, path: str, spans: dict[int, WeightSpan]) -> bytes:
    out = bytearray()
    index = 0
    for field, wire, f0, v0, v1 in _fields(buf, start, end):
        if field == _GRAPH_INITIALIZER and wire == _LEN:
            out += _length_field(field, _strip_tensor(buf, v0, v1, path, index, spans))
            index += 1
        else:
            out += buf[f0:v1]
    return bytes(out)


def _strip_tensor(buf: mmap.mmap, start: int, end: int, path: str, index: int,
                  spans: dict[int, WeightSpan]) -> bytes:
    """The tensor's bytes, without its raw_data when that is large and plainly laid out."""
    dims: list[int] = []
    data_type = 0
    raw: tuple[int, int, int] | None = None  # field start, value start, value end
    plain = True
    for field, wire, f0, v0, v1 in _fields(buf, start, end):
        if field == _T_DIMS:
            if wire == _VARINT:
                dims.append(_varint(buf, v0, v1)[0])
            else:  # packed
                pos = v0
                while pos < v1:
                    dim, pos = _varint(buf, pos, v1)
                    dims.append(dim)
        elif field == _T_DATA_TYPE and wire == _VARINT:
            data_type = _varint(buf, v0, v1)[0]
        elif field == _T_RAW_DATA and wire == _LEN:
            raw = (f0, v0, v1)
        elif field in (_T_SEGMENT, _T_DATA_LOCATION):
            plain = False
    dtype = _RAW_DTYPES.get(data_type)
    if raw is None or not plain or dtype is None or raw[2] - raw[1] < MIN_SPAN_BYTES:
        return bytes(buf[start:end])
    dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]  # int64 varints
    spans[index] = WeightSpan(path, raw[1], raw[2] - raw[1], np.dtype(dtype), tuple(dims))
    return bytes(buf[start:raw[0]]) + bytes(buf[raw[2]:end])
