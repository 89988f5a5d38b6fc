"""Tests of vicmae_jax.convert: the torch-free .pth reader/writer and the official <-> ours parameter mapping."""
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from vicmae_jax import convert

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def expected_mixed():
  """numpy mirror of tests/fixtures/make_pth_fixtures.py:build()."""
  import ml_dtypes

  base = np.arange(24, dtype=np.float32)
  shared = np.arange(10, dtype=np.float32) * 0.5
  return {
      "f32": base.reshape(2, 3, 4),
      "f32_transposed": base.reshape(4, 6).T,
      "f32_offset_view": shared[3:7],
      "f32_shared": shared,
      "f64": np.arange(5, dtype=np.float64) / 3,
      "f16": np.arange(6, dtype=np.float16) / np.float16(4),
      "bf16": (np.arange(6, dtype=np.float32) - 2.5).astype(ml_dtypes.bfloat16),
      "i64_scalar": np.array(123456789012, dtype=np.int64),
      "i32": np.arange(-3, 3, dtype=np.int32),
      "i8": np.arange(-4, 4, dtype=np.int8),
      "u8": np.arange(250, 256, dtype=np.uint8),
      "bool": np.array([True, False, True]),
      "param": np.arange(4, dtype=np.float32).reshape(2, 2) + 1,
  }


def assert_same_arrays(actual, expected):
  assert set(actual) == set(expected)
  for name, value in expected.items():
    got = actual[name]
    assert got.dtype == value.dtype, name
    assert got.shape == value.shape, name
    np.testing.assert_array_equal(got, value, err_msg=name)


def test_reads_torch_saved_file_without_torch():
  loaded = convert.load_pth(os.path.join(FIXTURES, "torch_saved_mixed.pth"))
  assert_same_arrays(loaded["model"], expected_mixed())
  assert loaded["epoch"] == 41
  assert loaded["nested"] == {"list": [1, 2.5, "three", None], "tuple": (True, -7, 2**40)}
  assert isinstance(loaded["args"], convert.OpaqueObject)
  assert loaded["args"].qualname == "argparse.Namespace"
  assert loaded["args"].state == {"lr": 0.5, "model": "vit"}


def test_arrays_do_not_alias_the_shared_storage():
  loaded = convert.load_pth(os.path.join(FIXTURES, "torch_saved_mixed.pth"))["model"]
  loaded["f32_shared"][3] = -1.0
  assert loaded["f32_offset_view"][0] == 1.5


def _zip_with_pickle(path, payload: bytes):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", payload)
    archive.writestr("evil/version", b"3\n")


def test_unknown_globals_are_never_called(tmp_path):
  marker = tmp_path / "marker"
  marker.write_text("still here")
  # A pickle that would call os.remove(marker) if the reader resolved globals normally.
  payload = b"\x80\x02cos\nremove\n" + b"X" + struct.pack("<I", len(str(marker))) + str(marker).encode() + b"\x85R."
  path = tmp_path / "evil.pth"
  _zip_with_pickle(path, payload)
  loaded = convert.load_pth(str(path))
  assert marker.exists()
  assert isinstance(loaded, convert.OpaqueObject)
  assert loaded.qualname == "os.remove"
  assert loaded.args == (str(marker),)


def test_standard_pickle_payload_is_inert(tmp_path):
  class Exploit:
    def __reduce__(self):
      return (os.system, ("echo should-not-run",))

  path = tmp_path / "evil.pth"
  _zip_with_pickle(path, pickle.dumps({"model": Exploit()}, protocol=2))
  loaded = convert.load_pth(str(path))
  assert isinstance(loaded["model"], convert.OpaqueObject)
  assert loaded["model"].args == ("echo should-not-run",)


def test_not_a_zip_is_a_clear_error(tmp_path):
  path = tmp_path / "legacy.pth"
  path.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(convert.PthFormatError, match="legacy.pth.*not a zip-format"):
    convert.load_pth(str(path))


def test_missing_storage_record_is_named(tmp_path):
  source = os.path.join(FIXTURES, "torch_saved_mixed.pth")
  path = tmp_path / "truncated.pth"
  with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
    for info in src.infolist():
      if not info.filename.endswith("/data/0"):
        dst.writestr(info, src.read(info))
  with pytest.raises(convert.PthFormatError, match="torch_saved_mixed/data/0"):
    convert.load_pth(str(path))


def test_writer_round_trip(tmp_path):
  arrays = expected_mixed()
  arrays["big_endian"] = np.arange(5, dtype=">f4")
  obj = {"model": arrays, "epoch": 3, "meta": [1, -2**40, 0.25, "x", None, (True, False)]}
  path = str(tmp_path / "ours.pth")
  convert.save_pth(obj, path)
  loaded = convert.load_pth(path)
  expected = dict(arrays, big_endian=np.arange(5, dtype="<f4"))
  assert_same_arrays(loaded["model"], expected)
  assert loaded["epoch"] == 3
  assert loaded["meta"] == [1, -2**40, 0.25, "x", None, (True, False)]


def test_writer_aligns_storage_records(tmp_path):
  path = str(tmp_path / "ours.pth")
  convert.save_pth({"a": np.ones(3, np.float32), "b": np.ones(7, np.int8), "c": np.ones(2, np.float64)}, path)
  with open(path, "rb") as f:
    raw = f.read()
  with zipfile.ZipFile(path) as archive:
    records = [info for info in archive.infolist() if "/data/" in info.filename]
    assert len(records) == 3
    for info in records:
      name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
      data_start = info.header_offset + 30 + name_length + extra_length
      assert data_start % 64 == 0, info.filename
      assert raw[data_start: data_start + info.file_size] == archive.read(info)


def test_torch_reads_what_we_write(tmp_path):
  torch = pytest.importorskip("torch")
  arrays = expected_mixed()
  path = str(tmp_path / "ours.pth")
  convert.save_pth({"model": arrays, "epoch": 5}, path)
  loaded = torch.load(path, weights_only=True)
  assert loaded["epoch"] == 5
  for name, value in arrays.items():
    tensor = loaded["model"][name]
    assert tuple(tensor.shape) == value.shape, name
    if name == "bf16":
      np.testing.assert_array_equal(tensor.float().numpy(), value.astype(np.float32))
    else:
      np.testing.assert_array_equal(tensor.numpy(), value, err_msg=name)


def test_torch_backend_agrees_with_numpy_reader():
  pytest.importorskip("torch")
  path = os.path.join(FIXTURES, "torch_saved_mixed.pth")
  with_torch = convert.load_pth(path, backend="torch")
  assert_same_arrays(with_torch["model"], convert.load_pth(path)["model"])
