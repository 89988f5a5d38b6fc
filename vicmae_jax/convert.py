"""Official PyTorch ViC-MAE / MAE checkpoints <-> our parameters.

Reading a `.pth` file needs no torch: PyTorch's zip format is a zip archive holding `data.pkl` (a pickle whose
tensors are persistent references) and one raw little-endian buffer per storage under `data/`. A restricted
unpickler resolves only the few globals that tensors need; every other global (e.g. `argparse.Namespace` in the
official training checkpoints) becomes an inert `OpaqueObject`, so loading never runs code from the file.
Writing goes the other way with a hand-written pickle stream that `torch.load(..., weights_only=True)` accepts.

Parameter mapping (official name -> our path, with the layout change):

  patch_embed.proj.weight [D, C, p, p]   -> kernel [p*p*C, D] in the (p, q, c) order of `patchify`
  Linear weight [out, in]                -> Dense kernel [in, out]
  attn.qkv.weight [3*D, D]               -> the attention's query/key/value kernels (see `_qkv_*`)
  LayerNorm weight / bias                -> scale / bias
  BatchNorm1d running_mean / running_var -> BatchStat mean / var (num_batches_tracked is dropped / re-created)
  pos_embed / decoder_pos_embed          -> not parameters here (fixed sin-cos); checked against ours

Output of a conversion: DIR is an orbax StandardCheckpointer directory holding {"params": ..., "batch_stats": ...}
(nested dicts, string keys, the pure-dict layout of `nnx.state(model, nnx.Param / nnx.BatchStat)`), usable as a
training `init_from`, plus DIR/conversion.json (source, kind, model config, image size, what was loaded).

CLI:
  python -m vicmae_jax.convert --input=ckpt.pth --output=DIR [--kind=vicmae|mae|encoder] [--variant=B/16]
      [--set decoder_depth=2 ...] [--scan_layers] [--no-strict]
  python -m vicmae_jax.convert --export --input=DIR --output=ckpt.pth [--kind=...] [--image_size=224]
Without --variant the architecture is read off the checkpoint (head counts from the published variant with the
same encoder); with it, the checkpoint must fit that variant (and the --set overrides) exactly.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

from vicmae_jax.models import param_tree

# ---------------------------------------------------------------------------------------------------------
# .pth reading without torch
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# .pth writing without torch
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# Official names <-> our parameter paths
# ---------------------------------------------------------------------------------------------------------

KINDS = ("vicmae", "mae", "encoder")
# Official buffers that are not parameters here: the fixed position tables (checked against ours, see
# `_check_pos_embed`) and BatchNorm's batch counter (unused with a fixed momentum).
_POS_EMBEDS = ("pos_embed", "decoder_pos_embed")
# Keys of a fine-tuned classifier (official models_vit.VisionTransformer) that have no place in ViC-MAE.
_CLASSIFIER_PREFIXES = ("head.", "fc_norm.")


class ConversionError(ValueError):
  """The checkpoint does not fit the model; `missing`, `unexpected` and `mismatched` name every offender."""

  def __init__(self, message: str, *, missing=(), unexpected=(), mismatched=()):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)


class _Entry:
  """One official tensor and where it lives here.

  layout: "linear" (torch [out, in] <-> kernel [in, out]), "patch" (conv [D, C, p, p] <-> kernel [p*p*C, D]),
  or "copy" (same array).
  """

  __slots__ = ("official", "collection", "path", "layout")

  def __init__(self, official: str, collection: str, path: tuple[str, ...], layout: str):
    self.official, self.collection, self.path, self.layout = official, collection, path, layout


def _block_entries(official_prefix: str, our_prefix: tuple[str, ...]) -> list[_Entry]:
  out = []
  for official, ours in (
    ("norm1", ("norm1",)),
    ("attn.qkv", ("attn", "qkv")),
    ("attn.proj", ("attn", "proj")),
    ("norm2", ("norm2",)),
    ("mlp.fc1", ("mlp", "fc1")),
    ("mlp.fc2", ("mlp", "fc2")),
  ):
    is_norm = official.startswith("norm")
    out.append(
      _Entry(
        f"{official_prefix}.{official}.weight",
        "params",
        our_prefix + ours + (("scale",) if is_norm else ("kernel",)),
        "copy" if is_norm else "linear",
      )
    )
    out.append(
      _Entry(f"{official_prefix}.{official}.bias", "params", our_prefix + ours + ("bias",), "copy")
    )
  return out


def _linear(official: str, path: tuple[str, ...]) -> list[_Entry]:
  return [
    _Entry(f"{official}.weight", "params", path + ("kernel",), "linear"),
    _Entry(f"{official}.bias", "params", path + ("bias",), "copy"),
  ]


def _norm(official: str, path: tuple[str, ...]) -> list[_Entry]:
  return [
    _Entry(f"{official}.weight", "params", path + ("scale",), "copy"),
    _Entry(f"{official}.bias", "params", path + ("bias",), "copy"),
  ]


def official_entries(depth: int, decoder_depth: int, kind: str) -> list[_Entry]:
  """Every official tensor of a `kind` checkpoint with its path here, in the official state_dict order.

  The position tables and `num_batches_tracked` are not listed (they are not parameters here).
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  with_decoder = kind in ("vicmae", "mae")
  entries = [_Entry("cls_token", "params", ("encoder", "cls_token"), "copy")]
  if with_decoder:
    entries.append(_Entry("mask_token", "params", ("decoder", "mask_token"), "copy"))
  entries += [
    _Entry("patch_embed.proj.weight", "params", ("encoder", "patch_embed", "kernel"), "patch"),
    _Entry("patch_embed.proj.bias", "params", ("encoder", "patch_embed", "bias"), "copy"),
  ]
  for i in range(depth):
    entries += _block_entries(f"blocks.{i}", ("encoder", "blocks", str(i)))
  entries += _norm("norm", ("encoder", "norm"))
  if with_decoder:
    entries += _linear("decoder_embed", ("decoder", "embed"))
    for i in range(decoder_depth):
      entries += _block_entries(f"decoder_blocks.{i}", ("decoder", "blocks", str(i)))
    entries += _norm("decoder_norm", ("decoder", "norm"))
    entries += _linear("decoder_pred", ("decoder", "pred"))
  if kind == "vicmae":
    for index, name in ((0, "fc1"), (3, "fc2"), (6, "fc3")):
      entries += _linear(f"projector.{index}", ("projector", name))
      if index < 6:
        bn_index, bn = index + 1, f"bn{index // 3 + 1}"
        entries += _norm(f"projector.{bn_index}", ("projector", bn))
        entries += [
          _Entry(
            f"projector.{bn_index}.running_mean", "batch_stats", ("projector", bn, "mean"), "copy"
          ),
          _Entry(
            f"projector.{bn_index}.running_var", "batch_stats", ("projector", bn, "var"), "copy"
          ),
        ]
  return entries


def _official_order(entries: list[_Entry], kind: str) -> list[str]:
  """Official state_dict key order: module-level tensors first (incl. position tables), then submodules."""
  names = [e.official for e in entries]
  tokens = ["cls_token", "pos_embed"] + (
    ["mask_token", "decoder_pos_embed"] if kind != "encoder" else []
  )
  rest = [n for n in names if n not in tokens]
  out = []
  for name in rest:
    out.append(name)
    if name.endswith(".running_var"):
      out.append(name[: -len("running_var")] + "num_batches_tracked")
  return tokens + out


def _to_ours(entry: _Entry, value: np.ndarray) -> np.ndarray:
  if entry.layout == "linear":
    return value.T
  if entry.layout == "patch":
    # [D, C, p, q] -> [p, q, C, D] -> [p*q*C, D]: rows in the (p, q, c) order of `patchify`.
    return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
  return value


def _to_official(entry: _Entry, value: np.ndarray, in_channels: int) -> np.ndarray:
  if entry.layout == "linear":
    return value.T
  if entry.layout == "patch":
    rows, width = value.shape
    p = int(round((rows // in_channels) ** 0.5))
    return value.reshape(p, p, in_channels, width).transpose(3, 2, 0, 1)
  return value


def _official_shape(entry: _Entry, our_shape: tuple[int, ...], in_channels: int) -> tuple[int, ...]:
  if entry.layout == "linear":
    return tuple(reversed(our_shape))
  if entry.layout == "patch":
    rows, width = our_shape
    p = int(round((rows // in_channels) ** 0.5))
    return (width, in_channels, p, p)
  return tuple(our_shape)


# ---------------------------------------------------------------------------------------------------------
# Reading an official checkpoint
# ---------------------------------------------------------------------------------------------------------


def extract_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
  """The tensors of an official checkpoint: under 'model' (official training), 'state_dict', 'module', or top level.

  A DistributedDataParallel 'module.' prefix is removed. Raises PthFormatError naming what was found instead.
  """
  obj = checkpoint
  if isinstance(obj, Mapping):
    for key in (
      "model",
      "state_dict",
      "model_state",
      "module",
    ):  # "module": DeepSpeed's model states file
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise PthFormatError(
      f"no state dict found in the checkpoint (top-level: {type(checkpoint).__name__})"
    )
  non_arrays = sorted(k for k, v in obj.items() if not isinstance(v, np.ndarray))
  if non_arrays:
    keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else []
    raise PthFormatError(
      f"entries that are not tensors in the state dict: {non_arrays[:10]} "
      f"(checkpoint top-level keys: {keys})"
    )
  state = {str(k): v for k, v in obj.items()}
  if all(k.startswith("module.") for k in state):
    state = {k[len("module.") :]: v for k, v in state.items()}
  return state


def detect_kind(state_dict: Mapping[str, np.ndarray]) -> str:
  """ "vicmae" (has the projector), "mae" (decoder, no projector) or "encoder" (encoder only)."""
  if any(k.startswith("projector.") for k in state_dict):
    return "vicmae"
  if "decoder_embed.weight" in state_dict:
    return "mae"
  return "encoder"


def _count_blocks(state_dict: Mapping[str, np.ndarray], prefix: str) -> int:
  indices = {
    int(k.split(".")[1])
    for k in state_dict
    if k.startswith(prefix + ".") and k.split(".")[1].isdigit()
  }
  return max(indices) + 1 if indices else 0


def infer_model_config(
  state_dict: Mapping[str, np.ndarray], *, kind: str | None = None
) -> dict[str, Any]:
  """Architecture fields read off an official state dict (input for `resolve_model_config`).

  Head counts are not stored in a checkpoint: they come from the published variant with the same encoder
  (patch size, width, depth); a ValueError asks for them when none matches. Parts absent from the checkpoint
  (decoder, projector) take that variant's sizes.
  When the checkpoint has a `pos_embed`, the image size it was trained at (from the table's length) is returned
  too, under "_image_size" (not a model field: pop it before `resolve_model_config`).
  """
  from vicmae_jax.models import variants

  kind = kind or detect_kind(state_dict)
  if "patch_embed.proj.weight" not in state_dict:
    raise ConversionError(
      "cannot read the architecture: 'patch_embed.proj.weight' is missing",
      missing=["patch_embed.proj.weight"],
    )
  width, in_channels, patch, _ = state_dict["patch_embed.proj.weight"].shape
  cfg: dict[str, Any] = {
    "patch_size": int(patch),
    "embed_dim": int(width),
    "in_channels": int(in_channels),
    "depth": _count_blocks(state_dict, "blocks"),
  }
  if "blocks.0.mlp.fc1.weight" in state_dict:
    cfg["mlp_ratio"] = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width
  if kind in ("vicmae", "mae") and "decoder_embed.weight" in state_dict:
    cfg["decoder_embed_dim"] = int(state_dict["decoder_embed.weight"].shape[0])
    cfg["decoder_depth"] = _count_blocks(state_dict, "decoder_blocks")
  if kind == "vicmae" and "projector.0.weight" in state_dict and "projector.6.weight" in state_dict:
    cfg["projector_hidden_dim"] = int(state_dict["projector.0.weight"].shape[0])
    cfg["projector_out_dim"] = int(state_dict["projector.6.weight"].shape[0])
  matches = [
    name
    for name, v in variants.VARIANTS.items()
    if (v["patch_size"], v["embed_dim"], v["depth"]) == (cfg["patch_size"], width, cfg["depth"])
  ]
  if not matches:
    raise ValueError(
      f"no known variant has patch {cfg['patch_size']}, width {width}, depth {cfg['depth']}: the head counts "
      "cannot be read from a checkpoint; give them (e.g. --set num_heads=12 --set decoder_num_heads=16)"
    )
  variant = dict(variants.VARIANTS[matches[0]])
  cfg["num_heads"] = variant["num_heads"]
  for field in ("decoder_embed_dim", "decoder_depth", "projector_hidden_dim", "projector_out_dim"):
    if field not in cfg and field in variant:
      cfg[field] = variant[field]
  if cfg.get("decoder_embed_dim") == variant["decoder_embed_dim"]:
    cfg["decoder_num_heads"] = variant["decoder_num_heads"]
  if "pos_embed" in state_dict:
    grid = int(round((state_dict["pos_embed"].shape[1] - 1) ** 0.5))
    cfg["_image_size"] = grid * cfg["patch_size"]
  return cfg


def _check_pos_embed(state_dict, name: str, width: int) -> str | None:
  """None when `name` holds the official fixed sin-cos table; else what is wrong with it."""
  from vicmae_jax.models import vit

  value = state_dict[name]
  if value.ndim != 3 or value.shape[0] != 1 or value.shape[2] != width:
    return f"{name}: shape {value.shape}, expected [1, 1 + L, {width}]"
  grid = int(round((value.shape[1] - 1) ** 0.5))
  if grid * grid != value.shape[1] - 1:
    return f"{name}: {value.shape[1] - 1} patch positions is not a square grid"
  table = vit.sincos_2d(width, grid, grid, cls_token=True)
  diff = float(np.max(np.abs(value[0].astype(np.float32) - table)))
  # The official table is computed in float32; ours in float64 then rounded. They agree to ~1e-6.
  if diff > 1e-4:
    return (
      f"{name}: not the fixed 2-D sin-cos table (max |difference| {diff:.3g}); it was learned or "
      "interpolated, and the model here always uses the fixed table"
    )
  return None


def _list_layout(tree) -> dict:
  """A pure dict (any key types, either block layout) -> string keys, list layout for blocks."""
  return param_tree.unstack_blocks(param_tree.stringify_keys(tree))


def abstract_tree(model_cfg: Mapping[str, Any]) -> dict:
  """{"params", "batch_stats"} of the model as ShapeDtypeStructs, string keys, list layout for blocks."""
  from flax import nnx

  from vicmae_jax.models import vicmae as vicmae_model

  model = nnx.eval_shape(lambda: vicmae_model.build_model(model_cfg, rngs=nnx.Rngs(0)))
  return {
    "params": _list_layout(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
    "batch_stats": _list_layout(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))),
  }


def initial_tree(model_cfg: Mapping[str, Any], seed: int = 0) -> dict:
  """Like `abstract_tree` with the values of a fresh initialization (numpy arrays)."""
  from flax import nnx

  from vicmae_jax.models import vicmae as vicmae_model

  model = vicmae_model.build_model(model_cfg, rngs=nnx.Rngs(seed))
  to_numpy = lambda tree: _list_layout(param_tree.tree_to_numpy(nnx.to_pure_dict(tree)))
  return {
    "params": to_numpy(nnx.state(model, nnx.Param)),
    "batch_stats": to_numpy(nnx.state(model, nnx.BatchStat)),
  }


def official_to_ours(
  state_dict: Mapping[str, np.ndarray],
  model_cfg: Mapping[str, Any],
  *,
  kind: str | None = None,
  strict: bool = True,
  seed: int = 0,
) -> tuple[dict, dict]:
  """Maps an official state dict onto our parameters.

  Args:
    state_dict: official names -> arrays (see `extract_state_dict`).
    model_cfg: our model config (`resolve_model_config` input); its shapes are what the checkpoint must fit.
    kind: "vicmae", "mae" or "encoder"; detected from the keys when None. Parts a kind lacks (mae: projector;
      encoder: decoder and projector) keep a fresh initialization from `seed`.
    strict: raise ConversionError naming every missing / unexpected / mis-shaped tensor. With False the
      same problems are warnings, and the tensors concerned keep their fresh initialization.

  Returns:
    (tree, report): tree = {"params": nested dict, "batch_stats": nested dict} of numpy arrays with string keys,
    in the layout the config asks for (stacked blocks when `scan_layers`); report = {"kind", "loaded",
    "initialized", "ignored", "missing", "unexpected", "mismatched", "warnings"}.
  """
  import warnings

  from vicmae_jax.models import variants

  cfg = variants.resolve_model_config(model_cfg)
  state_dict = dict(state_dict)
  kind = kind or detect_kind(state_dict)
  entries = official_entries(cfg["depth"], cfg["decoder_depth"], kind)
  target = abstract_tree(cfg)
  values: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
  missing, mismatched, loaded = [], [], []
  for entry in entries:
    leaf = param_tree.get_path(target[entry.collection], entry.path)
    want = _official_shape(entry, tuple(leaf.shape), cfg["in_channels"])
    if entry.official not in state_dict:
      missing.append(entry.official)
      continue
    got = tuple(state_dict[entry.official].shape)
    if got != want:
      mismatched.append(
        f"{entry.official}: checkpoint {list(got)} vs model {list(want)} "
        f"({entry.collection}/{'/'.join(entry.path)})"
      )
      continue
    values[(entry.collection, entry.path)] = np.asarray(
      _to_ours(entry, state_dict[entry.official]), dtype=leaf.dtype
    )
    loaded.append(entry.official)

  known = {e.official for e in entries}
  ignored = [
    k
    for k in state_dict
    if k.endswith("num_batches_tracked")
    and k[: -len("num_batches_tracked")] + "running_var" in known
  ]
  positions = [
    name
    for name in _POS_EMBEDS
    if name in state_dict and (name == "pos_embed" or kind != "encoder")
  ]
  ignored += positions
  warnings_list = []
  for name in positions:
    width = cfg["embed_dim"] if name == "pos_embed" else cfg["decoder_embed_dim"]
    problem = _check_pos_embed(state_dict, name, width)
    if problem:
      mismatched.append(problem)
  unexpected = [k for k in state_dict if k not in known and k not in ignored]
  hints = []
  if any(k.startswith(_CLASSIFIER_PREFIXES) for k in state_dict):
    hints.append(
      "this looks like a fine-tuned classifier (official models_vit: 'head.*' / 'fc_norm.*'); only "
      "pretraining checkpoints map onto ViC-MAE. strict=False (CLI: --no-strict) takes its encoder "
      "blocks and leaves the rest initialized"
    )
  if kind != "vicmae" and any(k.startswith("projector.") for k in state_dict):
    hints.append(f"kind={kind!r} but the checkpoint has a projector: use kind='vicmae'")
  if kind == "encoder" and "decoder_embed.weight" in state_dict:
    hints.append("kind='encoder' but the checkpoint has a decoder: use kind='mae' or 'vicmae'")

  if missing or unexpected or mismatched:
    lines = [
      f"official {kind} checkpoint does not fit the model "
      f"(variant={cfg.get('variant')!r}, embed_dim={cfg['embed_dim']}, depth={cfg['depth']}):"
    ]
    if missing:
      lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
      lines.append(f"  mismatched ({len(mismatched)}): " + "; ".join(mismatched))
    lines += [f"  hint: {h}" for h in hints]
    message = "\n".join(lines)
    if strict:
      raise ConversionError(message, missing=missing, unexpected=unexpected, mismatched=mismatched)
    warnings.warn(
      message + "\n  (strict=False: those tensors keep their fresh initialization)", stacklevel=2
    )
    warnings_list.append(message)

  target_flat = {
    (collection, path): leaf
    for collection in ("params", "batch_stats")
    for path, leaf in param_tree.flatten(target[collection]).items()
  }
  initialized = [f"{c}/{'/'.join(p)}" for (c, p) in target_flat if (c, p) not in values]
  fresh = initial_tree(cfg, seed) if initialized else None
  tree: dict = {"params": {}, "batch_stats": {}}
  for collection, path in target_flat:
    value = values.get((collection, path))
    if value is None:
      value = param_tree.get_path(fresh[collection], path)
    param_tree.set_path(tree[collection], path, value)
  if cfg["scan_layers"]:
    tree = {name: param_tree.stack_blocks(sub) for name, sub in tree.items()}
  report = {
    "kind": kind,
    "loaded": loaded,
    "initialized": initialized,
    "ignored": ignored,
    "missing": missing,
    "unexpected": unexpected,
    "mismatched": mismatched,
    "warnings": warnings_list,
  }
  return tree, report


# ---------------------------------------------------------------------------------------------------------
# Writing an official checkpoint
# ---------------------------------------------------------------------------------------------------------


def tree_kind(tree: Mapping) -> str:
  """The richest official kind a {"params", ...} tree can fill."""
  params = tree["params"]
  if "projector" in params:
    return "vicmae"
  if "decoder" in params:
    return "mae"
  return "encoder"


def ours_to_official(
  tree: Mapping, *, image_size: int, kind: str | None = None, in_channels: int = 3
) -> "collections.OrderedDict[str, np.ndarray]":
  """Our {"params", "batch_stats"} tree (list or scan layout) -> an official state dict, in official order.

  Args:
    image_size: side of the square images the official model is built for; sets the length of the fixed
      `pos_embed` / `decoder_pos_embed` tables it expects in its state dict.
    kind: "vicmae" (everything), "mae" (no projector) or "encoder"; the richest the tree allows when None.
  BatchNorm `num_batches_tracked` is written as 0: the official projector uses a fixed momentum, which never
  reads it.
  """
  from vicmae_jax.models import vit

  kind = kind or tree_kind(tree)
  params = _list_layout(param_tree.tree_to_numpy(tree["params"]))
  batch_stats = _list_layout(param_tree.tree_to_numpy(tree.get("batch_stats", {})))
  collections_ = {"params": params, "batch_stats": batch_stats}
  depth = len(params["encoder"]["blocks"])
  decoder_depth = len(params["decoder"]["blocks"]) if kind != "encoder" else 0
  entries = official_entries(depth, decoder_depth, kind)
  by_name = {e.official: e for e in entries}
  width = params["encoder"]["cls_token"].shape[-1]
  patch = int(round((params["encoder"]["patch_embed"]["kernel"].shape[0] // in_channels) ** 0.5))
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
  grid = image_size // patch
  out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
  for name in _official_order(entries, kind):
    if name == "pos_embed":
      out[name] = vit.sincos_2d(width, grid, grid, cls_token=True)[None]
    elif name == "decoder_pos_embed":
      dec_width = params["decoder"]["mask_token"].shape[-1]
      out[name] = vit.sincos_2d(dec_width, grid, grid, cls_token=True)[None]
    elif name.endswith("num_batches_tracked"):
      out[name] = np.array(0, dtype=np.int64)
    else:
      entry = by_name[name]
      try:
        value = param_tree.get_path(collections_[entry.collection], entry.path)
      except KeyError:
        raise ConversionError(
          f"the tree has no {entry.collection}/{'/'.join(entry.path)} (needed for {name})",
          missing=[name],
        ) from None
      out[name] = np.ascontiguousarray(
        _to_official(entry, np.asarray(value, dtype=np.float32), in_channels)
      )
  return out


def load_into_model(model, tree: Mapping) -> None:
  """Writes a {"params", "batch_stats"} tree (string keys, either block layout) into an nnx model in place.

  Raises ValueError naming any path whose shape differs or that the tree lacks.
  """
  import jax
  from flax import nnx

  for collection, variable_type in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
    state = nnx.state(model, variable_type)
    current = nnx.to_pure_dict(state)
    stacked = param_tree.flatten(param_tree.stringify_keys(current))
    source = param_tree.stringify_keys(tree.get(collection, {}))
    # Bring the source to the model's block layout.
    source_flat = param_tree.flatten(
      param_tree.stack_blocks(source)
      if param_tree.has_scanned_blocks(current)
      else param_tree.unstack_blocks(source)
    )
    problems = []
    for path, leaf in stacked.items():
      if path not in source_flat:
        problems.append(f"{collection}/{'/'.join(path)}: missing")
      elif tuple(np.shape(source_flat[path])) != tuple(leaf.shape):
        problems.append(
          f"{collection}/{'/'.join(path)}: tree {list(np.shape(source_flat[path]))} vs model "
          f"{list(leaf.shape)}"
        )
    if problems:
      raise ValueError("cannot load the tree into the model: " + "; ".join(problems))

    def replace(path, leaf):
      key = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
      return jax.numpy.asarray(source_flat[key], dtype=leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(replace, current))
    nnx.update(model, state)


# ---------------------------------------------------------------------------------------------------------
# Files and CLI
# ---------------------------------------------------------------------------------------------------------

SIDECAR = "conversion.json"
# Model fields the sidecar records besides the variant's sizes (variants.ARCH_FIELDS): the others
# that shape the parameter tree.
_SIDECAR_FIELDS = (
  "mlp_ratio",
  "in_channels",
  "projector_hidden_dim",
  "projector_out_dim",
  "scan_layers",
)


def convert_checkpoint(
  input_path: str,
  output_dir: str,
  *,
  model_cfg: Mapping[str, Any] | None = None,
  kind: str | None = None,
  strict: bool = True,
  seed: int = 0,
) -> dict:
  """Official `.pth` -> orbax directory `output_dir` (+ conversion.json). Returns the sidecar's contents.

  Args:
    model_cfg: our model config (variant and/or fields). None, or one without "variant" and without
      architecture fields, reads the architecture off the checkpoint; its other fields (e.g. scan_layers) apply.
  """
  import json
  import os

  import orbax.checkpoint as ocp

  from vicmae_jax.models import variants

  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir):
    raise FileExistsError(f"--output {output_dir} already exists; choose a new directory")
  state_dict = extract_state_dict(load_pth(input_path))
  kind = kind or detect_kind(state_dict)
  cfg = dict(model_cfg or {})
  inferred = infer_model_config(state_dict, kind=kind)
  image_size = inferred.pop("_image_size", None)
  if cfg.get("variant") is None and not any(field in cfg for field in variants.ARCH_FIELDS):
    cfg = {**inferred, **cfg}
  tree, report = official_to_ours(state_dict, cfg, kind=kind, strict=strict, seed=seed)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(output_dir, tree)
  checkpointer.wait_until_finished()
  resolved = variants.resolve_model_config(cfg)
  sidecar = {
    "source": os.path.abspath(input_path),
    "kind": kind,
    "model": {field: resolved[field] for field in variants.ARCH_FIELDS + _SIDECAR_FIELDS},
    "variant": resolved.get("variant"),
    "image_size": image_size,
    "loaded": len(report["loaded"]),
    "initialized": report["initialized"],
    "ignored": report["ignored"],
    "warnings": report["warnings"],
  }
  with open(os.path.join(output_dir, SIDECAR), "w") as f:
    json.dump(sidecar, f, indent=2)
  return sidecar


def export_checkpoint(
  input_path: str, output_path: str, *, kind: str | None = None, image_size: int | None = None
) -> dict:
  """Our parameters (a converted directory, a training workdir or step) -> an official `.pth`.

  The file holds {"model": state_dict}, which the official fine-tuning and pretraining code read with
  `torch.load(path)["model"]`. Returns {"kind", "image_size", "num_tensors", "source"}.
  """
  import json
  import os

  from vicmae_jax import checkpoint as checkpoint_lib

  tree = checkpoint_lib.load_pretrained_tree(input_path)
  sidecar_path = os.path.join(input_path, SIDECAR)
  sidecar = {}
  if os.path.exists(sidecar_path):
    with open(sidecar_path) as f:
      sidecar = json.load(f)
  image_size = int(image_size or sidecar.get("image_size") or 224)
  in_channels = int(sidecar.get("model", {}).get("in_channels", 3))
  state_dict = ours_to_official(tree, image_size=image_size, kind=kind, in_channels=in_channels)
  save_pth({"model": state_dict}, output_path)
  return {
    "kind": kind or tree_kind(tree),
    "image_size": image_size,
    "num_tensors": len(state_dict),
    "source": os.path.abspath(input_path),
  }


def _parse_value(text: str):
  import json

  try:
    return json.loads(text)
  except ValueError:
    return text


def main(argv: list[str] | None = None) -> int:
  import argparse
  import json

  parser = argparse.ArgumentParser(
    prog="python -m vicmae_jax.convert",
    description="Official PyTorch ViC-MAE / MAE checkpoints <-> vicmae_jax parameters.",
  )
  parser.add_argument(
    "--input", required=True, help=".pth to convert, or (with --export) our checkpoint dir"
  )
  parser.add_argument(
    "--output", required=True, help="new directory, or (with --export) the .pth to write"
  )
  parser.add_argument(
    "--export", action="store_true", help="write an official .pth from our parameters"
  )
  parser.add_argument(
    "--kind", choices=KINDS, default=None, help="default: detected from the keys / the tree"
  )
  parser.add_argument(
    "--variant", default=None, help="our model variant, e.g. B/16 (default: read off the file)"
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="model config override, repeatable, e.g. --set decoder_depth=2",
  )
  parser.add_argument(
    "--scan_layers", action="store_true", help="write blocks stacked (for scan_layers=True)"
  )
  parser.add_argument(
    "--strict",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="fail on missing/unexpected/mis-shaped tensors (default); --no-strict warns instead",
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="init seed for parts the checkpoint lacks"
  )
  parser.add_argument(
    "--image_size", type=int, default=None, help="export: size of the position tables"
  )
  args = parser.parse_args(argv)

  if args.export:
    summary = export_checkpoint(args.input, args.output, kind=args.kind, image_size=args.image_size)
    print(json.dumps(summary, indent=2))
    return 0
  cfg: dict[str, Any] = {}
  if args.variant:
    cfg["variant"] = args.variant
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set expects FIELD=VALUE, got {item!r}")
    field, value = item.split("=", 1)
    cfg[field.strip()] = _parse_value(value.strip())
  if args.scan_layers:
    cfg["scan_layers"] = True
  try:
    summary = convert_checkpoint(
      args.input, args.output, model_cfg=cfg, kind=args.kind, strict=args.strict, seed=args.seed
    )
  except (
    ValueError,
    FileExistsError,
    FileNotFoundError,
  ) as e:  # ConversionError, PthFormatError, bad --set
    print(f"error: {e}")
    return 1
  print(json.dumps({k: v for k, v in summary.items() if k != "ignored"}, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
