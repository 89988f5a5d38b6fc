"""Photometric augmentation on the device: colour jitter, grayscale, Gaussian blur and solarize of a
batch of views inside the jitted step, with per-example parameters drawn from the step's key.

With `data.photometric_on_device` the host runs only the geometric head of each view spec (decode,
random_resized_crop, flip: what must be per-example and sized on the host) and hands fixed-size
uint8 views on; `split_spec` cuts a spec there, and `augment_views` applies the photometric tail to
the batch [B, 2, H, W, 3] in the step. Each op follows its host op in `image_codec` (the same
formulas, clipped and rounded to whole grey levels after every op, as the host's uint8 images are)
and draws its parameters from the same distributions as `augment.py`: colour jitter with
probability p, factors uniform in [max(0, 1 - x), 1 + x] (hue in [-x, x] turns) applied in a
uniformly random order; grayscale, blur (sigma uniform in its range) and solarize each with their
probability. The draws come from a key folded out of the step's key, so a resumed run augments every
step exactly as the uninterrupted run did, and they are made for the global batch, so they do not
depend on the device count.

Why it is an option, and its default ("auto": on for gpu/tpu, off for cpu): on an accelerator the
photometric ops are a few elementwise passes over the batch, a negligible part of the step, and
they take about 40% of the host's per-pair work away (benchmarks/RESULTS.md), which is what
limits a fast device; on the CPU backend the "device" is the same cores the host pipeline runs on,
so moving the work there frees nothing.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from vicmae_jax.data import augment
from vicmae_jax.data import augment_spec

# The ops that can run on the device, and so leave the host's spec when the option is on.
DEVICE_OPS = ("color_jitter", "grayscale", "blur", "solarize")
_FACTORIES = {
  "color_jitter": augment.color_jitter,
  "grayscale": augment.grayscale,
  "blur": augment.blur,
  "solarize": augment.solarize,
}
MODES = ("auto", "on", "off", "true", "false")
# Folded into the step's key for the augmentation draws (the masking keeps the step's key itself).
_KEY_SALT = 0x50484F54


@dataclasses.dataclass(frozen=True)
class DeviceOp:
  """One photometric op of a view and all its arguments (the host op's defaults filled in)."""

  name: str
  args: tuple[tuple[str, Any], ...]

  def arg(self, name: str) -> Any:
    return dict(self.args)[name]


def check_mode(mode: Any) -> str:
  """data.photometric_on_device -> "auto", "on" or "off"; raises ValueError naming the field."""
  if isinstance(mode, bool):
    return "on" if mode else "off"
  text = str(mode).strip().lower()
  if text not in MODES:
    raise ValueError(f"data.photometric_on_device: must be one of {', '.join(MODES)}, got {mode!r}")
  return {"true": "on", "false": "off"}.get(text, text)


def resolve_mode(mode: Any, backend: str | None = None) -> bool:
  """data.photometric_on_device -> on or off: "auto" is on for gpu and tpu, off for cpu."""
  text = check_mode(mode)
  if text == "auto":
    return (backend or jax.default_backend()) in ("gpu", "tpu", "cuda", "rocm")
  return text == "on"


def split_spec(spec: str | Sequence[str]) -> tuple[str, tuple[DeviceOp, ...]]:
  """A view spec -> (the host's geometric head, the device's photometric tail).

  Raises ValueError when a photometric op comes before a host op (the device runs after the host).
  """
  host, device = [], []
  for name, args, kwargs in augment_spec.parse_spec(spec):
    if name in DEVICE_OPS:
      bound = inspect.signature(_FACTORIES[name]).bind(*args, **kwargs)
      bound.apply_defaults()
      _FACTORIES[name](**bound.arguments)  # the host op's own argument checks
      device.append(DeviceOp(name, tuple(_hashable(bound.arguments).items())))
      continue
    if device:
      raise ValueError(
        f"op {name!r} follows the photometric op {device[-1].name!r} in {spec!r}: the step runs "
        "the photometric ops after the host's, so they must come last (or set "
        "data.photometric_on_device='off')"
      )
    text = name
    if args or kwargs:
      parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
      text = f"{name}({', '.join(parts)})"
    host.append(text)
  if not host:
    raise ValueError(f"view spec {spec!r} has no host op (at least `decode`)")
  return "|".join(host), tuple(device)


def _hashable(arguments: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in arguments.items()}


def split_views(specs: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[DeviceOp, ...], ...]]:
  """Every view's spec split (see split_spec); raises ValueError naming data.view_augmentations."""
  try:
    pairs = [split_spec(spec) for spec in specs]
  except ValueError as error:
    raise ValueError(f"data.view_augmentations: {error}") from None
  return tuple(h for h, _ in pairs), tuple(d for _, d in pairs)


def device_plan(data_cfg, backend: str | None = None) -> tuple[tuple[DeviceOp, ...], ...] | None:
  """The photometric ops the step runs per view, or None when data.photometric_on_device is off."""
  if not resolve_mode(data_cfg.get("photometric_on_device", "auto"), backend):
    return None
  specs = data_cfg.get("view_augmentations", augment.DEFAULT_VIEW_SPECS)
  return split_views(specs)[1]


# ----------------------------------------------------------------------------------------------------
# The ops on float32 [B, H, W, 3] batches of whole grey levels in [0, 255]; factors are [B].


def _grey_levels(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def _per_example(value: jax.Array) -> jax.Array:
  return jnp.asarray(value, jnp.float32)[:, None, None, None]


def luma(x: jax.Array) -> jax.Array:
  """ITU-R 601-2 luma [B, H, W, 1] in OpenCV's fixed point (RGB2GRAY of uint8: weights in 1/2**14,
  rounded; exact in float32, whose integers are exact up to 2**24)."""
  weights = jnp.asarray([4899.0, 9617.0, 1868.0], jnp.float32)
  return jnp.floor((jnp.sum(x * weights, axis=-1, keepdims=True) + 8192.0) / 16384.0)


def grayscale(x: jax.Array) -> jax.Array:
  return jnp.broadcast_to(luma(x), x.shape)


def adjust_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
  return _grey_levels(_per_example(factor) * x)


def adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
  mean = jnp.floor(jnp.mean(luma(x), axis=(1, 2, 3), keepdims=True) + 0.5)
  return _grey_levels(mean + _per_example(factor) * (x - mean))


def adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
  factor = _per_example(factor)
  return _grey_levels(factor * x + (1.0 - factor) * luma(x))


def hue_rotation(hue: jax.Array) -> jax.Array:
  """[B, 3, 3] rotations about the grey axis by `hue` turns (image_codec.hue_rotation_matrix)."""
  angle = 2.0 * jnp.pi * jnp.asarray(hue, jnp.float32)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rest, cross = (1.0 - cos) / 3.0, sin / jnp.sqrt(3.0)
  rows = [
    [cos + rest, rest - cross, rest + cross],
    [rest + cross, cos + rest, rest - cross],
    [rest - cross, rest + cross, cos + rest],
  ]
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def adjust_hue(x: jax.Array, hue: jax.Array) -> jax.Array:
  return _grey_levels(jnp.einsum("bhwj,bcj->bhwc", x, hue_rotation(hue)))


def solarize(x: jax.Array, threshold: float) -> jax.Array:
  return jnp.where(x >= threshold, 255.0 - x, x)


def gaussian_taps(kernel_size: int, sigma: jax.Array) -> jax.Array:
  """[B, kernel_size] normalized taps at -(k-1)/2 .. (k-1)/2 (image_codec.gaussian_kernel1d)."""
  half = (kernel_size - 1) * 0.5
  positions = jnp.linspace(-half, half, kernel_size, dtype=jnp.float32)
  taps = jnp.exp(-0.5 * (positions / jnp.asarray(sigma, jnp.float32)[:, None]) ** 2)
  return taps / jnp.sum(taps, axis=-1, keepdims=True)


def _filter_axis(x: jax.Array, taps: jax.Array, axis: int) -> jax.Array:
  """Per-example 1-D filter along `axis` (1: rows, 2: columns), reflect padding without the edge."""
  size = taps.shape[-1]
  half = size // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (half, half)
  padded = jnp.pad(x, pad, mode="reflect")
  length = x.shape[axis]
  out = jnp.zeros_like(x)
  for tap in range(size):
    window = jax.lax.slice_in_dim(padded, tap, tap + length, axis=axis)
    out = out + taps[:, tap][:, None, None, None] * window
  return out


def gaussian_blur(x: jax.Array, sigma: jax.Array, kernel_size: tuple[int, int]) -> jax.Array:
  """Separable blur, kernel_size = (width, height), one sigma per example, then whole grey levels."""
  width, height = kernel_size
  x = _filter_axis(x, gaussian_taps(width, sigma), axis=2)
  return _grey_levels(_filter_axis(x, gaussian_taps(height, sigma), axis=1))


def apply_jitter(x: jax.Array, order: jax.Array, factors: jax.Array) -> jax.Array:
  """Colour jitter with per-example `order` [B, 4] (0 brightness, 1 contrast, 2 saturation, 3 hue)
  and `factors` [B, 4] in that fixed order (identity factors 1, 1, 1, 0 for an unused one)."""
  ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  for position in range(4):
    which = order[:, position][:, None, None, None]
    out = x
    for index, op in enumerate(ops):
      out = jnp.where(which == index, op(x, factors[:, index]), out)
    x = out
  return x


# ----------------------------------------------------------------------------------------------------
# Drawing the parameters and applying a view's ops.


def draw_params(op: DeviceOp, key: jax.Array, batch: int) -> dict[str, jax.Array]:
  """Per-example parameters of one op for `batch` examples, as the host op draws them."""
  apply_key, order_key, factor_key = jax.random.split(key, 3)
  params = {"apply": jax.random.uniform(apply_key, (batch,)) < float(op.arg("p"))}
  if op.name == "color_jitter":
    params["order"] = jnp.argsort(jax.random.uniform(order_key, (batch, 4)), axis=-1)
    lows, highs = [], []
    for field in ("brightness", "contrast", "saturation"):
      strength = float(op.arg(field))
      lows.append(max(0.0, 1.0 - strength) if strength > 0 else 1.0)
      highs.append(1.0 + strength if strength > 0 else 1.0)
    hue = float(op.arg("hue"))
    lows.append(-hue)
    highs.append(hue)
    params["factors"] = jax.random.uniform(
      factor_key,
      (batch, 4),
      minval=jnp.asarray(lows, jnp.float32),
      maxval=jnp.asarray(highs, jnp.float32),
    )
  elif op.name == "blur":
    low, high = augment._pair("blur", "sigma", op.arg("sigma"))
    params["sigma"] = jax.random.uniform(factor_key, (batch,), minval=low, maxval=high)
  return params


def apply_op(op: DeviceOp, x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
  """One op on [B, H, W, 3] floats with drawn params; examples not drawn to apply it pass through."""
  if op.name == "color_jitter":
    out = apply_jitter(x, params["order"], params["factors"])
  elif op.name == "grayscale":
    out = grayscale(x)
  elif op.name == "blur":
    kernel = op.arg("kernel_size")
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(int(k) for k in kernel)
    out = gaussian_blur(x, params["sigma"], kernel)
  elif op.name == "solarize":
    out = solarize(x, float(op.arg("threshold")))
  else:
    raise ValueError(f"no device op {op.name!r}")
  return jnp.where(params["apply"][:, None, None, None], out, x)


def augment_views(
  views: jax.Array, key: jax.Array, plan: Sequence[Sequence[DeviceOp]] | None
) -> jax.Array:
  """uint8 views [B, V, H, W, 3] -> float32 [B, V, H, W, 3] (whole grey levels in [0, 255]) with
  view v's ops of `plan` applied; the views unchanged (as float32) when plan is None.

  `key` is the step's key; the draws use a key folded out of it (view v, op i: fold_in(v), fold_in(i)).
  """
  x = views.astype(jnp.float32)
  if not plan:
    return x
  if len(plan) != views.shape[1]:
    raise ValueError(f"the plan has ops for {len(plan)} views, the batch has {views.shape[1]}")
  key = jax.random.fold_in(key, _KEY_SALT)
  out = []
  for view_index, ops in enumerate(plan):
    view = x[:, view_index]
    view_key = jax.random.fold_in(key, view_index)
    for op_index, op in enumerate(ops):
      params = draw_params(op, jax.random.fold_in(view_key, op_index), views.shape[0])
      view = apply_op(op, view, params)
    out.append(view)
  return jnp.stack(out, axis=1)
