"""Space-time ViT for video fine-tuning, inflated from the image encoder.

Shapes (channels last):
  video    [B, T, H, W, C]      float32, normalized with ``vit.normalize_images``; T % tubelet == 0
  patches  [B, T', L, t*p*p*C]  T' = T / t tubelets in time, L = (H/p)*(W/p) patches per frame;
                                each tubelet flattened as (frame-in-tubelet, p, q, c)
  tokens   [B, N, D]            N = T' (cls copies, if used) + T' * L patch tokens, joint
                                space-time attention over all of them
  features [B, D]               mean of the patch tokens after the final norm (cls excluded)
  logits   [B, num_classes]     head(fc_norm(features))

Inflation. The tubelet kernel [t*p*p*C, D] is the image kernel [p*p*C, D] repeated for each of
the t frames and divided by t, so a tubelet of t equal frames embeds exactly like one image
patch. Position: the image encoder's fixed 2-D sin-cos embedding, the same for every T' slot,
plus a learned temporal embedding [T', D] (zeros at init).

The cls token (``use_cls=True``, the default) is inflated as well: one copy per temporal slot
(plus that slot's temporal embedding). On a static clip every key of the image encoder then
appears exactly T' times, so softmax weights, and hence every token, equal the image
encoder's: ``features(static clip) == image pooled features`` holds with the pretrained cls in
the attention context. A single shared cls token would break this (it would be outweighed
T' : 1 by the duplicated patch keys). ``use_cls=False`` drops cls entirely (VideoMAE style);
a static clip then matches the image encoder run without its cls token.

Parameter tree (names as in ``vit.VisionTransformer`` so optimizer rules apply unchanged)::

  patch_embed.{kernel [t*p*p*C, D], bias [D]}
  cls_token [1, 1, D]                  only with use_cls
  temporal_pos_embed [T', D]
  blocks ... norm                      exactly the image encoder's (list or scanned layout)
  fc_norm.{scale, bias} [D]
  head.{kernel [D, num_classes], bias [num_classes]}

The encoder's final ``norm`` is kept (it is what the contrastive pooled features were trained
through) and ``fc_norm`` is a new LayerNorm on the pooled features before the head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicmae_jax import optim
from vicmae_jax.models import block_stack, layers, variants, vit

# Parameters of the video model that the image encoder does not have.
NEW_PARAMS = ("temporal_pos_embed", "fc_norm", "head")


class VideoViT(block_stack.BlockStackModule):
  """Inflated space-time ViT classifier. ``__call__(video [B, T, H, W, C]) -> logits [B, K]``."""

  def __init__(
    self,
    dims: block_stack.EncoderDims,
    *,
    num_classes: int,
    tubelet_size: int = 2,
    num_frames: int = 16,
    use_cls: bool = True,
    drop_path_rate: float = 0.0,
    settings: block_stack.StackSettings = block_stack.StackSettings(),
    rngs: nnx.Rngs,
  ):
    dtype, param_dtype = settings.dtype, settings.param_dtype
    embed_dim = dims.embed_dim
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if tubelet_size < 1:
      raise ValueError(f"tubelet_size must be >= 1, got {tubelet_size}")
    if num_frames < tubelet_size or num_frames % tubelet_size:
      raise ValueError(
        f"num_frames={num_frames} must be a positive multiple of tubelet_size={tubelet_size}"
      )
    self.dims = dims
    self.patch_size, self.embed_dim, self.in_channels = (
      dims.patch_size,
      embed_dim,
      dims.in_channels,
    )
    self.tubelet_size = tubelet_size
    self.num_frames = num_frames
    self.use_cls = use_cls
    self.patch_embed, self.cls_token = vit.patch_embedding(
      tubelet_size * dims.patch_dim,
      embed_dim,
      use_cls=use_cls,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.temporal_pos_embed = nnx.Param(
      jnp.zeros((num_frames // tubelet_size, embed_dim), param_dtype),
      out_sharding=(None, "embed"),
      eager_sharding=False,
    )
    # The blocks as the image encoder's; the final norm's output stays float32.
    self.init_stack(
      dims.depth,
      embed_dim,
      dims.num_heads,
      dims.mlp_ratio,
      drop_path_rate=drop_path_rate,
      settings=settings,
      norm_activation_dtype=jnp.float32,
      rngs=rngs,
    )
    self.fc_norm = layers.layer_norm(embed_dim, param_dtype=param_dtype, rngs=rngs)
    # Official fine-tuning head init: weights N(0, 2e-5) (truncated), zero bias.
    self.head = nnx.Linear(
      embed_dim,
      num_classes,
      kernel_init=nnx.with_partitioning(
        nnx.initializers.truncated_normal(stddev=2e-5), ("embed", "vocab"), eager_sharding=False
      ),
      bias_init=nnx.with_partitioning(
        nnx.initializers.zeros_init(), ("vocab",), eager_sharding=False
      ),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def temporal_embedding(self, num_slots: int) -> jax.Array:
    """``[num_slots, D]`` float32: the learned table, linearly resampled if the clip has a
    different number of tubelets than the model was built for."""
    table = self.temporal_pos_embed[...].astype(jnp.float32)
    if num_slots == table.shape[0]:
      return table
    return jax.image.resize(table, (num_slots, self.embed_dim), method="linear")

  def tubelets(self, video: jax.Array) -> jax.Array:
    """``[B, T, H, W, C]`` -> ``[B, T', L, t*p*p*C]`` (see module doc for the order)."""
    if video.ndim != 5 or video.shape[-1] != self.in_channels:
      raise ValueError(f"video must be [B, T, H, W, {self.in_channels}], got shape {video.shape}")
    batch, frames = video.shape[:2]
    t = self.tubelet_size
    if frames % t:
      raise ValueError(f"number of frames {frames} is not divisible by tubelet_size {t}")
    patches = vit.patchify(video, self.patch_size)  # [B, T, L, p*p*C]
    length, patch_dim = patches.shape[2:]
    patches = patches.reshape(batch, frames // t, t, length, patch_dim)
    return jnp.swapaxes(patches, 2, 3).reshape(batch, frames // t, length, t * patch_dim)

  def embed(self, video: jax.Array) -> jax.Array:
    """``[B, T, H, W, C]`` -> input tokens ``[B, N, D]`` float32 (cls copies first, if used)."""
    x = self.patch_embed(self.tubelets(video)).astype(jnp.float32)  # [B, T', L, D]
    grid_h, grid_w = vit.patch_grid(video, self.patch_size)
    batch, slots = x.shape[:2]
    temporal = self.temporal_embedding(slots)
    x = x + jnp.asarray(vit.sincos_2d(self.embed_dim, grid_h, grid_w, cls_token=False))[None, None]
    x = x + temporal[None, :, None, :]
    x = x.reshape(batch, -1, self.embed_dim)
    if self.use_cls:
      cls = self.cls_token[...].astype(jnp.float32).reshape(1, 1, self.embed_dim) + temporal[None]
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, slots, self.embed_dim)), x], axis=1)
    return x

  def tokens(
    self, video: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """Output tokens after blocks and final norm, ``[B, N, D]`` float32."""
    return self.run_stack(self.embed(video), key=key, train=train)

  def features(
    self, video: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """Mean of the patch tokens (cls copies excluded) ``[B, D]`` float32."""
    tokens = self.tokens(video, key=key, train=train)
    num_cls = video.shape[1] // self.tubelet_size if self.use_cls else 0
    return vit.mean_patch_tokens(tokens, num_cls)

  def __call__(
    self, video: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """``[B, T, H, W, C]`` -> logits ``[B, num_classes]`` float32; ``key`` drives drop path."""
    pooled = self.fc_norm(self.features(video, key=key, train=train))
    return self.head(pooled).astype(jnp.float32)


def build_video_model(
  model_cfg: Mapping[str, Any],
  *,
  num_classes: int,
  num_frames: int = 16,
  tubelet_size: int = 2,
  use_cls: bool = True,
  rngs: nnx.Rngs,
) -> VideoViT:
  """VideoViT with the encoder dims of a ViC-MAE model config (``model.variant`` etc.).

  Raises ValueError naming the field for a bad model config (see ``variants.resolve_model_config``).
  """
  c = variants.resolve_model_config(model_cfg)
  return VideoViT(
    num_classes=num_classes,
    tubelet_size=tubelet_size,
    num_frames=num_frames,
    use_cls=use_cls,
    **variants.encoder_kwargs(c),
    rngs=rngs,
  )


# ----------------------------------------------------------------------------------------------
# Loading an image encoder
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamMapping:
  """How one parameter was set. action: copied | inflated | stacked | unstacked | new | unused.

  ``target`` is None for an unused source parameter; ``source`` is None for a new one.
  """

  target: str | None
  source: str | None
  action: str


def _flat_params(tree: Any) -> dict[tuple[str, ...], Any]:
  return {
    optim.path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _encoder_params(source: Any) -> dict[tuple[str, ...], Any]:
  """Flat {path: array} of an image encoder from a module, an nnx.State or a nested dict.

  A full ViC-MAE tree (with an ``encoder`` entry) is narrowed to its encoder.
  """
  if isinstance(source, nnx.Module):
    source = nnx.state(source, nnx.Param)
  flat = _flat_params(source)
  if ("patch_embed", "kernel") not in flat and any(k[0] == "encoder" for k in flat):
    flat = {k[1:]: v for k, v in flat.items() if k[0] == "encoder"}
  if ("patch_embed", "kernel") not in flat:
    raise ValueError(
      "image encoder params have no patch_embed/kernel "
      f"(top-level entries: {sorted({k[0] for k in flat})})"
    )
  return flat


def _block_param(
  flat: dict, rest: tuple[str, ...], depth: int
) -> tuple[np.ndarray, str, str] | None:
  """The source value for ``blocks/<rest>`` stacked over ``depth`` layers, from either layout."""
  stacked_key = ("blocks",) + rest
  if stacked_key in flat:
    return np.asarray(flat[stacked_key]), "/".join(stacked_key), "copied"
  per_layer = [("blocks", str(i)) + rest for i in range(depth)]
  if all(k in flat for k in per_layer):
    return (
      np.stack([np.asarray(flat[k]) for k in per_layer]),
      "blocks/*/" + "/".join(rest),
      "stacked",
    )
  return None


def from_image_encoder(model: VideoViT, source: Any) -> list[ParamMapping]:
  """Sets ``model``'s parameters from an image encoder and reports each one by name.

  source: a ``vit.VisionTransformer``, its params (``nnx.State`` or nested dict), or a whole
    ViC-MAE params tree (its ``encoder`` is used). Block layouts may differ (list vs scanned).
  The patch kernel is inflated over the tubelet; ``temporal_pos_embed``, ``fc_norm`` and
  ``head`` stay as initialized. Raises ValueError naming the parameter on a missing source
  entry or a shape mismatch.
  """
  src = _encoder_params(source)
  target_state = nnx.state(model, nnx.Param)
  target = _flat_params(target_state)
  depth = len(model.drop_path_rates)
  report: list[ParamMapping] = []
  used: set[tuple[str, ...]] = set()
  values: dict[tuple[str, ...], np.ndarray] = {}

  for key, leaf in target.items():
    name = "/".join(key)
    if key[0] in NEW_PARAMS:
      report.append(ParamMapping(name, None, "new"))
      continue
    if key == ("patch_embed", "kernel"):
      image_kernel = np.asarray(src[key], np.float32)
      value = np.concatenate([image_kernel] * model.tubelet_size, axis=0) / model.tubelet_size
      source_name, action = name, "inflated"
      used.add(key)
    elif key[0] == "blocks":
      rest = key[2:] if len(key) > 1 and key[1].isdigit() else key[1:]
      found = _block_param(src, rest, depth)
      if found is None:
        raise ValueError(f"{name}: no matching parameter in the image encoder")
      stacked, source_name, action = found
      if key[1].isdigit():  # list layout target: take this layer's slice
        value = stacked[int(key[1])]
        if source_name.startswith("blocks/*"):
          source_name, action = "/".join(("blocks", key[1]) + rest), "copied"
        else:
          action = "unstacked"
      else:
        value = stacked
      used.update(k for k in src if k[0] == "blocks" and (k[1:] == rest or k[2:] == rest))
    else:
      if key not in src:
        raise ValueError(f"{name}: no matching parameter in the image encoder")
      value, source_name, action = np.asarray(src[key]), name, "copied"
      used.add(key)
    if tuple(value.shape) != tuple(np.shape(leaf)):
      raise ValueError(
        f"{name}: image encoder gives shape {tuple(value.shape)} "
        f"({source_name}), the video model needs {tuple(np.shape(leaf))}"
      )
    values[key] = value.astype(leaf.dtype)
    report.append(ParamMapping(name, source_name, action))

  for key in sorted(set(src) - used):
    report.append(ParamMapping(None, "/".join(key), "unused"))

  new_state = jax.tree_util.tree_map_with_path(
    lambda path, leaf: (
      jnp.asarray(values[optim.path_names(path)]) if optim.path_names(path) in values else leaf
    ),
    target_state,
  )
  nnx.update(model, new_state)
  return report
