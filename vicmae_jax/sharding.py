"""Device mesh and the one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter with logical names (``nnx.Variable`` metadata
``out_sharding``, e.g. a qkv kernel ``[D, 3D]`` is ``('embed', 'heads')``) and never mentions the
mesh. This module turns those names into ``NamedSharding``s for a mesh with the axes

- ``data``:  plain data parallelism (parameters replicated),
- ``fsdp``:  data parallelism that also shards parameters and optimizer state (ZeRO-3 style),
- ``model``: tensor parallelism over MLP hidden units / attention heads.

Global batches ``[B, ...]`` are split over ``('data', 'fsdp')`` on their leading axis.

A mesh axis is used at most once per array: a logical name whose mesh axes are already taken by an
earlier dimension of the same array (or do not divide that dimension) leaves the dimension
unsharded. This is what lets ``('mlp', 'embed')`` and ``('embed', 'mlp')`` share one rule table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")

# Logical axis -> mesh axes (a name, a tuple of names, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", ("data", "fsdp")),  # leading axis of activations and input batches
  ("embed", "fsdp"),  # transformer width: the FSDP-sharded dimension of every large kernel
  ("mlp", "model"),  # MLP / projector hidden units
  ("heads", "model"),  # fused q/k/v outputs and attention-output inputs
  ("kv", None),  # per-head feature dimension
  ("patch", None),  # flattened patch pixels p*p*C
  ("vocab", "model"),  # classifier outputs
  ("norm", None),  # LayerNorm scales / biases: small, replicated
  ("layers", None),  # stacked-layer axis of scanned blocks
)


def _rules_dict(rules: Sequence[tuple[str, Any]]) -> dict[str, tuple[str, ...]]:
  table: dict[str, tuple[str, ...]] = {}
  for name, mesh_axes in rules:
    if mesh_axes is None:
      mesh_axes = ()
    elif isinstance(mesh_axes, str):
      mesh_axes = (mesh_axes,)
    table[name] = tuple(mesh_axes)
  return table


def logical_to_spec(
  logical_axes: Sequence[str | None],
  shape: Sequence[int] | None,
  mesh: Mesh | Any,
  rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> PartitionSpec:
  """Maps logical names of an array's dimensions to a ``PartitionSpec`` on ``mesh``.

  Args:
    logical_axes: one logical name (or None) per dimension.
    shape: the array shape; a dimension not divisible by its mesh axes' size stays unsharded.
      None skips the divisibility check.
    mesh: a ``Mesh`` or ``AbstractMesh`` (only its axis names and sizes are read).
    rules: (logical name, mesh axes) pairs.
  Raises:
    ValueError: a logical name that the rules do not know.
  """
  table = _rules_dict(rules)
  sizes = dict(mesh.shape)
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    axes = tuple(a for a in table[name] if a in sizes and a not in used and sizes[a] > 1)
    if shape is not None and axes and shape[dim] % math.prod(sizes[a] for a in axes):
      axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def state_shardings(
  abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
  """NamedShardings for a state pytree, from the logical names on its ``nnx.Variable``s.

  Args:
    abstract_state: an ``nnx.State`` (or any pytree) whose Variables hold arrays or
      ``jax.ShapeDtypeStruct``s, e.g. ``nnx.state(nnx.eval_shape(lambda: build_model(...)))``.
  Returns:
    The same structure with every Variable's value replaced by its ``NamedSharding``
    (usable as ``in_shardings`` / ``out_shardings`` of ``jax.jit`` and for ``jax.device_put``).
    Variables without logical names and plain array leaves are replicated.
  """

  def one(leaf):
    if isinstance(leaf, nnx.Variable):
      names = leaf.get_metadata().get("out_sharding")
      shape = getattr(leaf.get_value(), "shape", ())
      spec = logical_to_spec(names, shape, mesh, rules) if names else PartitionSpec()
      return leaf.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a mesh with axes ``('data', 'fsdp', 'model')`` (Auto axis types).

  Args:
    mesh_cfg: sizes per axis, e.g. ``{"data": -1, "fsdp": 1, "model": 1}``; one axis may be -1
      (all remaining devices); missing axes have size 1.
    devices: the devices to use (default ``jax.devices()``).
  Raises:
    ValueError: unknown axis names, bad sizes, or sizes that do not multiply to the device count.
  """
  if hasattr(mesh_cfg, "to_dict"):
    mesh_cfg = mesh_cfg.to_dict()
  unknown = sorted(set(mesh_cfg) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh: unknown axes {unknown}; allowed {list(MESH_AXES)}")
  devices = list(jax.devices() if devices is None else devices)
  sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES}
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {fill}")
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis} must be a positive size or -1, got {size}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if len(devices) % known:
      raise ValueError(
        f"mesh.{fill[0]}=-1: {len(devices)} devices are not divisible by the other axes ({known})"
      )
    sizes[fill[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {len(devices)}")
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  return jax.make_mesh(
    shape,
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    devices=devices,
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a global batch ``[B, ...]``: leading axis over ``('data', 'fsdp')``."""
  return NamedSharding(mesh, logical_to_spec(("batch",), None, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def validate_batch(global_batch: int, mesh: Mesh) -> None:
  """Checks that ``global_batch`` splits evenly over the batch-parallel mesh axes.

  Raises:
    ValueError: naming ``batch_size`` when it is not divisible by ``data * fsdp``.
  """
  parallel = math.prod(dict(mesh.shape).get(a, 1) for a in ("data", "fsdp"))
  if global_batch <= 0 or global_batch % parallel:
    raise ValueError(
      f"batch_size={global_batch} must be a positive multiple of data*fsdp={parallel} "
      f"(mesh {dict(mesh.shape)})"
    )
  if jax.process_count() > 1 and global_batch % jax.process_count():
    raise ValueError(
      f"batch_size={global_batch} must be divisible by the process count {jax.process_count()}"
    )


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside a mesh context.

  Inside ``jax.set_mesh(mesh)`` (or a jit traced under it) this pins e.g. the batch axis of
  ``[B, N, D]`` activations to ``('data', 'fsdp')`` so XLA does not move it elsewhere.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not set(MESH_AXES) & set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def tree_size(tree: Any) -> int:
  """Number of array elements in a pytree (works on abstract shapes too)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")))
