"""Config helpers: mesh resolution, durations, option parsing and validation errors."""

import pytest

from vicmae_jax import config_lib
from vicmae_jax.config_lib import ConfigError


def _cfg(**kw):
  c = config_lib.base_config()
  c.num_steps = 10
  c.update(kw)
  return c


def test_mesh_shape_fills_free_axis():
  assert config_lib.mesh_shape({"data": -1, "fsdp": 2, "model": 1}, 8) == {
    "data": 4,
    "fsdp": 2,
    "model": 1,
  }
  assert config_lib.mesh_shape({"data": 8}, 8) == {"data": 8, "fsdp": 1, "model": 1}


@pytest.mark.parametrize(
  "mesh,field",
  [
    ({"data": 3, "fsdp": 1, "model": 1}, "mesh"),
    ({"data": -1, "fsdp": -1}, "mesh"),
    ({"dta": 8}, "mesh.dta"),
    ({"data": -1, "fsdp": 3}, "mesh"),
  ],
)
def test_mesh_shape_errors(mesh, field):
  with pytest.raises(ConfigError) as e:
    config_lib.mesh_shape(mesh, 8)
  assert e.value.field == field


def test_batch_not_divisible_names_batch_size():
  c = _cfg(batch_size=12)
  with pytest.raises(ConfigError) as e:
    config_lib.validate_common(c, 8)
  assert e.value.field == "batch_size"
  assert "divisible" in str(e.value)
  config_lib.validate_common(_cfg(batch_size=16), 8)


def test_exactly_one_duration():
  c = _cfg(num_epochs=2.0)  # and num_steps=10
  with pytest.raises(ConfigError, match="num_epochs"):
    config_lib.validate_common(c, 1)
  c = _cfg(num_steps=0)
  with pytest.raises(ConfigError):
    config_lib.validate_common(c, 1)


def test_resolve_durations_epochs_and_steps():
  c = _cfg(batch_size=32, num_steps=0, num_epochs=2.5, warmup_epochs=0.5)
  d = config_lib.resolve_durations(c, dataset_size=1000)  # 31 steps per epoch
  assert d.steps_per_epoch == 31
  assert d.total_steps == round(2.5 * 31)
  assert d.warmup_steps == round(0.5 * 31)
  c = _cfg(batch_size=32, num_steps=7, warmup_steps=100)
  d = config_lib.resolve_durations(c, dataset_size=1000)
  assert (d.total_steps, d.warmup_steps) == (7, 7)


def test_parse_arg_types_and_unknown():
  out = config_lib.parse_arg(
    "variant=L/16,runlocal,steps=5,lr=0.5", variant="B/16", runlocal=False, steps=1, lr=1.0
  )
  assert out.variant == "L/16" and out.runlocal is True and out.steps == 5 and out.lr == 0.5
  with pytest.raises(ConfigError, match="did you mean 'variant'"):
    config_lib.parse_arg("varaint=L/16", variant="B/16")


def test_model_config_override_types():
  m = config_lib.model_config()
  m.width = 128
  assert m.width == 128
  with pytest.raises(TypeError):
    m.width = "wide"


def test_as_config_error_names_the_field_once():
  def fails(message):
    def fn():
      raise ValueError(message)

    return fn

  cases = {
    "model.mask_ratio must be in [0, 1), got 1.0": "config.model.mask_ratio: must be in [0, 1), got 1.0",
    "model.attention_impl='flash' is not one of [None]": "config.model.attention_impl: 'flash' is not one of [None]",
    "data.sources.k400.path: not found": "config.data.sources.k400.path: not found",
    "config.data.batch: too big": "config.data.batch: too big",
    "something else went wrong": "config.data: something else went wrong",
  }
  for message, expected in cases.items():
    with pytest.raises(ConfigError) as error:
      config_lib.as_config_error(
        "data" if not message.startswith("model") else "model", fails(message)
      )
    assert str(error.value) == expected
  assert config_lib.as_config_error("model", lambda: 3) == 3
