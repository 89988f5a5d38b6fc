"""Mesh construction, logical-axis rules, FSDP coverage of large models, batch validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vicmae_jax import sharding
from vicmae_jax.models import vicmae


def test_make_mesh_sizes_and_errors():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
  assert dict(sharding.make_mesh({"fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "model": 1}
  mesh = sharding.make_mesh({"data": 2}, devices=jax.devices()[:2])
  assert mesh.devices.size == 2
  with pytest.raises(ValueError, match="mesh: unknown axes \\['tensor'\\]"):
    sharding.make_mesh({"tensor": 2})
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh({"data": 3, "fsdp": 2})
  with pytest.raises(ValueError, match="mesh.data=-1"):
    sharding.make_mesh({"data": -1, "fsdp": 3})
  with pytest.raises(ValueError, match="mesh.model"):
    sharding.make_mesh({"data": -1, "model": 0})


def test_logical_to_spec_uses_each_mesh_axis_once_and_needs_divisibility():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
  assert sharding.logical_to_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "model")
  assert sharding.logical_to_spec(("mlp", "embed"), (256, 64), mesh) == P("model", "fsdp")
  # 'embed' twice: the second one finds 'fsdp' taken and stays replicated.
  assert sharding.logical_to_spec(("embed", "embed"), (64, 64), mesh) == P("fsdp", None)
  # 3 is not divisible by fsdp=2 -> unsharded rather than an error at device_put.
  assert sharding.logical_to_spec(("embed", "mlp"), (3, 256), mesh) == P(None, "model")
  assert sharding.logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("layers", "patch", "norm"), (2, 4, 4), mesh) == P(
    None, None, None
  )
  with pytest.raises(ValueError, match="'pixels'"):
    sharding.logical_to_spec(("pixels",), (4,), mesh)


def test_batch_sharding_and_validate_batch():
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
  assert sharding.replicated(mesh).spec == P()
  sharding.validate_batch(16, mesh)
  with pytest.raises(ValueError, match="batch_size=12"):
    sharding.validate_batch(12, mesh)
  with pytest.raises(ValueError, match="batch_size"):
    sharding.validate_batch(0, mesh)
  batch = jax.device_put(np.zeros((16, 2, 8, 8, 3), np.uint8), sharding.batch_sharding(mesh))
  assert batch.addressable_shards[0].data.shape == (2, 2, 8, 8, 3)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["L/16", "H/14"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_fsdp_rules_shard_every_large_parameter(variant, scan_layers):
  """Abstract shapes only (no initialization): every >= 1M-element array is split over fsdp."""
  abstract = nnx.eval_shape(
    lambda: vicmae.build_model({"variant": variant, "scan_layers": scan_layers}, rngs=nnx.Rngs(0))
  )
  state = nnx.state(abstract)
  mesh = sharding.make_mesh({"fsdp": 8})
  shardings = sharding.state_shardings(state, mesh)
  large = 0
  for (path, var), (_, shard) in zip(
    jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves_with_path(shardings)
  ):
    size = int(np.prod(var.shape))
    if size >= 1_000_000:
      large += 1
      assert "fsdp" in jax.tree.leaves(tuple(shard.spec)), (
        jax.tree_util.keystr(path),
        var.shape,
        shard.spec,
      )
      shard_shape = shard.shard_shape(var.shape)
      assert np.prod(shard_shape) * 8 == size
  assert large >= (5 if scan_layers else 4 * 24)


def test_state_shardings_drive_a_sharded_init():
  """Shapes first, then a jitted init whose outputs land with the declared shardings."""
  cfg = {"variant": "mu/8"}
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  abstract_state = nnx.state(nnx.eval_shape(lambda: vicmae.build_model(cfg, rngs=nnx.Rngs(0))))
  shardings = sharding.state_shardings(abstract_state, mesh)

  @jax.jit
  def init():
    return nnx.state(vicmae.build_model(cfg, rngs=nnx.Rngs(0)))

  state = jax.jit(init, out_shardings=shardings)()
  qkv = state["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"][...]
  assert qkv.sharding.spec == P("fsdp", None)
  assert qkv.addressable_shards[0].data.shape == (32, 192)
  assert state["encoder"]["cls_token"][...].sharding.spec == P(None, None, "fsdp")
  assert state["encoder"]["norm"]["scale"][...].sharding.spec == P(None)
  # Same values as an unsharded init with the same seed.
  reference = nnx.state(vicmae.build_model(cfg, rngs=nnx.Rngs(0)))
  np.testing.assert_array_equal(
    np.asarray(qkv), np.asarray(reference["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"][...])
  )


def test_constrain_is_noop_without_mesh_and_pins_batch_inside():
  x = jnp.zeros((8, 4, 6))
  assert sharding.constrain(x, ("batch", None, None)) is x
  mesh = sharding.make_mesh({"data": 8})

  @jax.jit
  def f(y):
    return sharding.constrain(y * 2, ("batch", None, None))

  with jax.set_mesh(mesh):
    out = f(jax.device_put(x, sharding.replicated(mesh)))
  assert out.sharding.spec[0] == "data"
