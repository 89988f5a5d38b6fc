"""PyTorch `.pth` files read and written without torch.

PyTorch's zip format is a zip archive holding `data.pkl` (a pickle whose tensors are persistent
references) and one raw little-endian buffer per storage under `data/`. A restricted unpickler
resolves only the few globals that tensors need; every other global (e.g. `argparse.Namespace` in
the official training checkpoints) becomes an inert `OpaqueObject`, so loading never runs code from
the file. Writing goes the other way with a hand-written pickle stream that
`torch.load(..., weights_only=True)` accepts.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np


def _bfloat16_dtype():
  import ml_dtypes  # a jax dependency; imported lazily so plain float checkpoints never need it

  return np.dtype(ml_dtypes.bfloat16)


# torch's typed storage classes -> numpy dtype (little-endian unless the archive says otherwise).
_STORAGE_DTYPES = {
  "DoubleStorage": "f8",
  "FloatStorage": "f4",
  "HalfStorage": "f2",
  "BFloat16Storage": "bfloat16",
  "LongStorage": "i8",
  "IntStorage": "i4",
  "ShortStorage": "i2",
  "CharStorage": "i1",
  "ByteStorage": "u1",
  "BoolStorage": "?",
}


def _numpy_dtype(storage_name: str, byteorder: str) -> np.dtype:
  code = _STORAGE_DTYPES[storage_name]
  if code == "bfloat16":
    dtype = _bfloat16_dtype()
  else:
    dtype = np.dtype(code)
  if dtype.itemsize > 1 and code != "bfloat16":
    dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
  return dtype


class PthFormatError(ValueError):
  """A file is not a PyTorch checkpoint this reader understands."""


class OpaqueObject:
  """Stand-in for a pickled object whose class this reader refuses to import.

  Attributes: `qualname` ("module.Name"), `args` (constructor/reduce arguments), `state` (what BUILD set).
  """

  qualname = "?"

  def __init__(self, *args, **kwargs):
    self.args = args
    self.kwargs = kwargs
    self.state = None

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"OpaqueObject({self.qualname})"


def _opaque_class(module: str, name: str) -> type:
  return type(name, (OpaqueObject,), {"qualname": f"{module}.{name}", "__module__": __name__})


class _StorageType:
  """What the pickle's `torch.FloatStorage` (etc.) global resolves to: only a dtype tag."""

  def __init__(self, name: str):
    self.name = name


def _rebuild_tensor_v2(
  storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
  del requires_grad, backward_hooks, metadata
  size = tuple(int(s) for s in size)
  if not size:
    return np.array(storage[storage_offset])
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    storage[storage_offset:], shape=size, strides=tuple(int(s) * itemsize for s in stride)
  )
  # A copy detaches the tensor from the (possibly shared) storage buffer and makes it contiguous.
  return np.array(view)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *state):
  del requires_grad, backward_hooks, state
  return data


# The only callables a checkpoint may reach. Everything else becomes an OpaqueObject.
_SAFE_GLOBALS = {
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch", "Size"): tuple,
}


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, data: bytes, read_storage):
    super().__init__(io.BytesIO(data))
    self._read_storage = read_storage

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    return _opaque_class(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise PthFormatError(f"unsupported persistent id in data.pkl: {pid!r}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise PthFormatError(f"unsupported storage type {storage_type!r} for storage {key!r}")
    return self._read_storage(str(key), storage_type.name, int(numel))


def load_pth(path: str, *, backend: str = "numpy") -> Any:
  """Loads a PyTorch `.pth` file; tensors come back as numpy arrays.

  Args:
    path: a file written by `torch.save` (zip format, torch >= 1.6) or by `save_pth`.
    backend: "numpy" (no torch needed; safe restricted unpickler) or "torch" (`torch.load(weights_only=True)`,
      then tensors converted to numpy; also reads the legacy pre-zip format).

  Returns:
    The pickled object with every tensor replaced by an `np.ndarray` (bfloat16 as `ml_dtypes.bfloat16`) and
    every object of a class outside the allow-list replaced by an `OpaqueObject`.
  """
  if backend == "torch":
    return _load_pth_with_torch(path)
  if backend != "numpy":
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
  if not zipfile.is_zipfile(path):
    raise PthFormatError(
      f"{path}: not a zip-format PyTorch file (legacy torch < 1.6 serialization?). Re-save it with a recent "
      "torch, or install torch and pass backend='torch'."
    )
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise PthFormatError(f"{path}: expected exactly one '<dir>/data.pkl' record, found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = archive.read(prefix + "byteorder").decode().strip()
    storages: dict[str, np.ndarray] = {}

    def read_storage(key: str, storage_name: str, numel: int) -> np.ndarray:
      if key not in storages:
        dtype = _numpy_dtype(storage_name, byteorder)
        record = f"{prefix}data/{key}"
        if record not in names:
          raise PthFormatError(f"{path}: storage record {record!r} is missing")
        buffer = archive.read(record)
        if len(buffer) < numel * dtype.itemsize:
          raise PthFormatError(
            f"{path}: storage {record!r} has {len(buffer)} bytes, expected {numel * dtype.itemsize}"
          )
        storages[key] = np.frombuffer(buffer, dtype=dtype, count=numel)
      return storages[key]

    return _RestrictedUnpickler(archive.read(pickles[0]), read_storage).load()


def _load_pth_with_torch(path: str) -> Any:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      "backend='torch' needs torch installed; the default backend='numpy' does not"
    ) from e
  import argparse

  # The official training scripts pickle their argparse.Namespace next to the weights; it only holds values.
  with torch.serialization.safe_globals([argparse.Namespace]):
    obj = torch.load(path, map_location="cpu", weights_only=True)

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      x = x.detach()
      if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(_bfloat16_dtype())
      return x.numpy().copy()
    if isinstance(x, dict):
      return type(x)((k, to_numpy(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
      return type(x)(to_numpy(v) for v in x)
    return x

  return to_numpy(obj)


# Writing.

_ALIGNMENT = 64  # torch aligns storage records to 64 bytes (lets it mmap them); we do the same.


class _PickleWriter:
  """Emits a protocol-2 pickle of dicts / lists / scalars / numpy arrays as torch tensors.

  Written by hand because the stream must name `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage`,
  which the standard pickler can only reference by importing torch.
  """

  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[np.ndarray] = []

  def _global(self, module: str, name: str):
    self.out.write(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def _str(self, s: str):
    data = s.encode("utf-8")
    self.out.write(b"X" + struct.pack("<I", len(data)) + data)

  def _int(self, v: int):
    if 0 <= v < 256:
      self.out.write(b"K" + struct.pack("<B", v))
    elif 0 <= v < 65536:
      self.out.write(b"M" + struct.pack("<H", v))
    elif -(2**31) <= v < 2**31:
      self.out.write(b"J" + struct.pack("<i", v))
    else:
      data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
      self.out.write(b"\x8a" + struct.pack("<B", len(data)) + data)

  def _tuple(self, items):
    self.out.write(b"(")
    for item in items:
      self.save(item)
    self.out.write(b"t")

  def _tensor(self, array: np.ndarray):
    storage_name = _storage_name(array.dtype)
    if not array.flags.c_contiguous:  # np.ascontiguousarray would turn a 0-d array into 1-d
      array = array.copy(order="C")
    if array.dtype.itemsize > 1 and array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    key = str(len(self.storages))
    self.storages.append(array)
    self._global("torch._utils", "_rebuild_tensor_v2")
    self.out.write(b"(")  # arguments of _rebuild_tensor_v2
    self.out.write(b"(")  # persistent id: ('storage', storage type, key, location, numel)
    self._str("storage")
    self._global("torch", storage_name)
    self._str(key)
    self._str("cpu")
    self._int(int(array.size))
    self.out.write(b"t" + b"Q")
    self._int(0)
    self._tuple([int(s) for s in array.shape])
    strides, step = [], 1
    for dim in reversed(array.shape):
      strides.append(step)
      step *= int(dim)
    self._tuple(list(reversed(strides)))
    self.out.write(b"\x89")  # requires_grad=False
    self._global("collections", "OrderedDict")
    self.out.write(b")R")  # backward_hooks = OrderedDict()
    self.out.write(b"tR")

  def save(self, obj):
    if obj is None:
      self.out.write(b"N")
    elif isinstance(obj, (bool, np.bool_)):
      self.out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, (int, np.integer)) and not isinstance(obj, np.ndarray):
      self._int(int(obj))
    elif isinstance(obj, (float, np.floating)) and not isinstance(obj, np.ndarray):
      self.out.write(b"G" + struct.pack(">d", float(obj)))
    elif isinstance(obj, str):
      self._str(obj)
    elif isinstance(obj, np.ndarray):
      self._tensor(obj)
    elif isinstance(obj, tuple):
      self._tuple(obj)
    elif isinstance(obj, list):
      self.out.write(b"]")
      if obj:
        self.out.write(b"(")
        for item in obj:
          self.save(item)
        self.out.write(b"e")
    elif isinstance(obj, Mapping):
      self.out.write(b"}")
      if obj:
        self.out.write(b"(")
        for key, value in obj.items():
          self.save(key)
          self.save(value)
        self.out.write(b"u")
    elif hasattr(obj, "__array__"):  # jax arrays and other array-likes
      self._tensor(np.asarray(obj))
    else:
      raise TypeError(
        f"cannot write {type(obj).__name__} to a .pth file (dicts, lists, scalars, arrays only)"
      )


def _storage_name(dtype: np.dtype) -> str:
  if dtype == _bfloat16_dtype():
    return "BFloat16Storage"
  for name, code in _STORAGE_DTYPES.items():
    if code != "bfloat16" and np.dtype(code) == dtype.newbyteorder("="):
      return name
  raise TypeError(f"no torch storage type for numpy dtype {dtype}")


def save_pth(obj: Any, path: str, *, archive_name: str = "archive") -> None:
  """Writes `obj` (nested dicts/lists/scalars with numpy arrays as tensors) as a zip-format `.pth` file.

  `torch.load(path, weights_only=True)` reads it back with every array as a `torch.Tensor`; `load_pth` reads it
  without torch. Arrays are written contiguous and little-endian.
  """
  writer = _PickleWriter()
  writer.out.write(b"\x80\x02")
  writer.save(obj)
  writer.out.write(b".")
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
    _write_record(archive, f"{archive_name}/data.pkl", writer.out.getvalue())
    _write_record(archive, f"{archive_name}/byteorder", b"little")
    for key, array in enumerate(writer.storages):
      _write_record(
        archive, f"{archive_name}/data/{key}", array.reshape(-1).view(np.uint8), align=True
      )
    _write_record(archive, f"{archive_name}/version", b"3\n")


def _write_record(archive: zipfile.ZipFile, name: str, data, *, align: bool = False) -> None:
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  if align:
    # Pad the local header's extra field so the record's bytes start on an _ALIGNMENT boundary.
    header_end = archive.fp.tell() + 30 + len(name.encode()) + 4
    padding = (-header_end) % _ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
  archive.writestr(info, bytes(data) if not isinstance(data, bytes) else data)
