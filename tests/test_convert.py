"""Tests of vicmae_jax.convert: the torch-free .pth reader/writer and the official <-> ours parameter mapping."""

import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from vicmae_jax import convert
from vicmae_jax import weights

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
  payload = (
    b"\x80\x02cos\nremove\n"
    + b"X"
    + struct.pack("<I", len(str(marker)))
    + str(marker).encode()
    + b"\x85R."
  )
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
  obj = {"model": arrays, "epoch": 3, "meta": [1, -(2**40), 0.25, "x", None, (True, False)]}
  path = str(tmp_path / "ours.pth")
  convert.save_pth(obj, path)
  loaded = convert.load_pth(path)
  expected = dict(arrays, big_endian=np.arange(5, dtype="<f4"))
  assert_same_arrays(loaded["model"], expected)
  assert loaded["epoch"] == 3
  assert loaded["meta"] == [1, -(2**40), 0.25, "x", None, (True, False)]


def test_writer_aligns_storage_records(tmp_path):
  path = str(tmp_path / "ours.pth")
  convert.save_pth(
    {"a": np.ones(3, np.float32), "b": np.ones(7, np.int8), "c": np.ones(2, np.float64)}, path
  )
  with open(path, "rb") as f:
    raw = f.read()
  with zipfile.ZipFile(path) as archive:
    records = [info for info in archive.infolist() if "/data/" in info.filename]
    assert len(records) == 3
    for info in records:
      name_length, extra_length = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
      )
      data_start = info.header_offset + 30 + name_length + extra_length
      assert data_start % 64 == 0, info.filename
      assert raw[data_start : data_start + info.file_size] == archive.read(info)


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


# ---------------------------------------------------------------------------------------------------------
# Official <-> ours mapping
# ---------------------------------------------------------------------------------------------------------

OFFICIAL_PTH = os.path.join(FIXTURES, "official_vicmae_small.pth")
# The fixture's architecture in our terms (see tests/fixtures/make_official_golden.py).
SMALL_CFG = {"variant": "mu/8", "decoder_depth": 2, "projector_out_dim": 16}


@pytest.fixture(scope="module")
def official_state():
  return convert.extract_state_dict(convert.load_pth(OFFICIAL_PTH))


def test_patch_kernel_equals_the_official_convolution():
  """patchify(images) @ converted kernel == the official stride-p Conv2d, computed independently in numpy."""
  from vicmae_jax.models import vit

  rng = np.random.default_rng(0)
  p, channels, width, size = 4, 3, 5, 8
  weight = rng.normal(size=(width, channels, p, p)).astype(
    np.float32
  )  # torch Conv2d [D, C, kh, kw]
  images = rng.normal(size=(2, size, size, channels)).astype(np.float32)  # ours: channels last
  grid = size // p
  conv = np.zeros((2, grid, grid, width), np.float32)
  for i in range(grid):
    for j in range(grid):
      window = images[:, i * p : (i + 1) * p, j * p : (j + 1) * p, :]  # [B, kh, kw, C]
      conv[:, i, j] = np.einsum("bhwc,dchw->bd", window, weight)
  entry = [
    e for e in convert.official_entries(1, 1, "vicmae") if e.official == "patch_embed.proj.weight"
  ][0]
  kernel = convert._to_ours(entry, weight)
  ours = np.asarray(vit.patchify(images, p)) @ kernel
  np.testing.assert_allclose(ours, conv.reshape(2, grid * grid, width), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(convert._to_official(entry, kernel, channels), weight)


def test_infer_model_config(official_state):
  inferred = convert.infer_model_config(official_state)
  assert inferred == {
    "patch_size": 8,
    "embed_dim": 64,
    "in_channels": 3,
    "depth": 2,
    "mlp_ratio": 4.0,
    "decoder_embed_dim": 32,
    "decoder_depth": 2,
    "projector_hidden_dim": 64,
    "projector_out_dim": 16,
    "num_heads": 4,
    "decoder_num_heads": 4,
    "_image_size": 32,
  }
  odd = dict(official_state)
  odd["patch_embed.proj.weight"] = np.zeros((72, 3, 8, 8), np.float32)
  with pytest.raises(ValueError, match="num_heads"):
    convert.infer_model_config(odd)


def test_export_reproduces_the_official_state_dict(official_state):
  tree, _ = convert.official_to_ours(official_state, SMALL_CFG)
  exported = convert.ours_to_official(tree, image_size=32)
  # Same names in the same order as the official model's state_dict().
  assert list(exported) == list(official_state)
  for name, value in official_state.items():
    assert exported[name].shape == value.shape, name
    if name.endswith("num_batches_tracked"):
      assert exported[name] == 0  # not tracked here; the official projector never reads it
    elif name.endswith("pos_embed"):
      np.testing.assert_allclose(exported[name], value, rtol=0, atol=1e-6)
    else:
      np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_scan_layout_stacks_blocks(official_state):
  tree, _ = convert.official_to_ours(official_state, dict(SMALL_CFG, scan_layers=True))
  qkv = tree["params"]["encoder"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv.shape == (2, 64, 192)
  np.testing.assert_array_equal(qkv[1], official_state["blocks.1.attn.qkv.weight"].T)
  exported = convert.ours_to_official(tree, image_size=32)
  np.testing.assert_array_equal(
    exported["decoder_blocks.1.mlp.fc2.weight"], official_state["decoder_blocks.1.mlp.fc2.weight"]
  )


def test_problems_are_reported_by_name(official_state):
  broken = dict(official_state)
  del broken["blocks.1.mlp.fc2.bias"]
  broken["blocks.7.attn.qkv.weight"] = np.zeros((3, 3), np.float32)
  broken["decoder_pred.weight"] = np.zeros((10, 32), np.float32)
  with pytest.raises(convert.ConversionError) as error:
    convert.official_to_ours(broken, SMALL_CFG)
  assert error.value.missing == ["blocks.1.mlp.fc2.bias"]
  assert error.value.unexpected == ["blocks.7.attn.qkv.weight"]
  assert len(error.value.mismatched) == 1 and error.value.mismatched[0].startswith(
    "decoder_pred.weight"
  )
  for name in (
    "blocks.1.mlp.fc2.bias",
    "blocks.7.attn.qkv.weight",
    "decoder_pred.weight: checkpoint [10, 32]",
  ):
    assert name in str(error.value)

  with pytest.warns(UserWarning, match="blocks.1.mlp.fc2.bias"):
    tree, report = convert.official_to_ours(broken, SMALL_CFG, strict=False)
  assert "params/encoder/blocks/1/mlp/fc2/bias" in report["initialized"]
  assert "params/decoder/pred/kernel" in report["initialized"]
  np.testing.assert_array_equal(
    tree["params"]["encoder"]["blocks"]["0"]["mlp"]["fc2"]["bias"],
    official_state["blocks.0.mlp.fc2.bias"],
  )


def test_wrong_variant_is_a_shape_mismatch(official_state):
  with pytest.raises(convert.ConversionError) as error:
    convert.official_to_ours(
      official_state, {"variant": "mu/8"}
    )  # decoder depth 1, projector out 32
  assert "decoder_blocks.1.norm1.weight" in error.value.unexpected
  assert any(
    m.startswith("projector.6.weight: checkpoint [16, 64] vs model [32, 64]")
    for m in error.value.mismatched
  )


def test_learned_position_table_is_refused(official_state):
  changed = dict(official_state)
  changed["pos_embed"] = official_state["pos_embed"] + 0.01
  with pytest.raises(convert.ConversionError, match="pos_embed: not the fixed 2-D sin-cos table"):
    convert.official_to_ours(changed, SMALL_CFG)


def test_mae_and_encoder_checkpoints_keep_the_rest_initialized(official_state):
  mae = {k: v for k, v in official_state.items() if not k.startswith("projector.")}
  assert convert.detect_kind(mae) == "mae"
  tree, report = convert.official_to_ours(mae, SMALL_CFG)
  assert sorted(report["initialized"]) == sorted(
    [
      f"params/projector/{layer}/{name}"
      for layer in ("fc1", "fc2", "fc3")
      for name in ("kernel", "bias")
    ]
    + [f"params/projector/{bn}/{name}" for bn in ("bn1", "bn2") for name in ("scale", "bias")]
    + [f"batch_stats/projector/{bn}/{name}" for bn in ("bn1", "bn2") for name in ("mean", "var")]
  )
  np.testing.assert_array_equal(
    tree["params"]["decoder"]["mask_token"], official_state["mask_token"]
  )

  encoder_keys = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
  encoder = {k: v for k, v in official_state.items() if k.startswith(encoder_keys)}
  assert convert.detect_kind(encoder) == "encoder"
  tree, report = convert.official_to_ours(encoder, SMALL_CFG)
  assert all(
    path.startswith(("params/decoder/", "params/projector/", "batch_stats/projector/"))
    for path in report["initialized"]
  )
  assert len(report["loaded"]) == 3 + 2 * 12 + 2
  exported = convert.ours_to_official(tree, image_size=32, kind="encoder")
  assert list(exported) == list(encoder)


def test_finetuned_classifier_is_reported_clearly(official_state):
  encoder_keys = ("cls_token", "pos_embed", "patch_embed.", "blocks.")
  finetuned = {k: v for k, v in official_state.items() if k.startswith(encoder_keys)}
  finetuned["pos_embed"] = finetuned["pos_embed"] + 0.01  # learned during fine-tuning
  finetuned["fc_norm.weight"] = np.ones(64, np.float32)
  finetuned["fc_norm.bias"] = np.zeros(64, np.float32)
  finetuned["head.weight"] = np.zeros((10, 64), np.float32)
  finetuned["head.bias"] = np.zeros(10, np.float32)
  with pytest.raises(convert.ConversionError, match="fine-tuned classifier") as error:
    convert.official_to_ours(finetuned, SMALL_CFG)
  assert error.value.missing == ["norm.weight", "norm.bias"]
  assert error.value.unexpected == ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
  with pytest.warns(UserWarning, match="fine-tuned classifier"):
    tree, report = convert.official_to_ours(finetuned, SMALL_CFG, strict=False)
  np.testing.assert_array_equal(
    tree["params"]["encoder"]["blocks"]["1"]["mlp"]["fc1"]["kernel"],
    official_state["blocks.1.mlp.fc1.weight"].T,
  )


def test_cli_converts_to_orbax_and_exports_back(tmp_path, official_state, capsys):
  import json

  out_dir = tmp_path / "converted"
  assert convert.main([f"--input={OFFICIAL_PTH}", f"--output={out_dir}"]) == 0
  assert (out_dir / "_CHECKPOINT_METADATA").exists()  # a real orbax checkpoint directory
  sidecar = json.loads((out_dir / convert.SIDECAR).read_text())
  assert sidecar["kind"] == "vicmae" and sidecar["image_size"] == 32 and sidecar["loaded"] == 74
  assert sidecar["model"]["decoder_depth"] == 2 and sidecar["model"]["projector_out_dim"] == 16

  # The training code's loader reads it as an init_from checkpoint.
  loaded = weights.load_pretrained_tree(str(out_dir))
  np.testing.assert_array_equal(
    loaded["params"]["encoder"]["blocks"]["0"]["attn"]["qkv"]["kernel"],
    official_state["blocks.0.attn.qkv.weight"].T,
  )
  np.testing.assert_array_equal(
    loaded["batch_stats"]["projector"]["bn2"]["var"], official_state["projector.4.running_var"]
  )

  exported_path = tmp_path / "exported.pth"
  assert convert.main(["--export", f"--input={out_dir}", f"--output={exported_path}"]) == 0
  exported = convert.extract_state_dict(convert.load_pth(str(exported_path)))
  assert list(exported) == list(official_state)
  np.testing.assert_array_equal(
    exported["projector.3.weight"], official_state["projector.3.weight"]
  )

  # A second conversion into an existing directory is refused, and a bad override is named.
  assert convert.main([f"--input={OFFICIAL_PTH}", f"--output={out_dir}"]) == 1
  capsys.readouterr()
  assert (
    convert.main([f"--input={OFFICIAL_PTH}", f"--output={tmp_path / 'x'}", "--set", "bogus=1"]) == 1
  )
  assert "model: unknown fields ['bogus']" in capsys.readouterr().out


def test_cli_with_variant_reports_mismatch(tmp_path, capsys):
  assert (
    convert.main([f"--input={OFFICIAL_PTH}", f"--output={tmp_path / 'x'}", "--variant=Ti/16"]) == 1
  )
  assert (
    "patch_embed.proj.weight: checkpoint [64, 3, 8, 8] vs model [192, 3, 16, 16]"
    in capsys.readouterr().out
  )
