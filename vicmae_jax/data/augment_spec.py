"""Augmentation specs: the op registry, spec strings, and composing registered ops into a view.

A spec is a string of ops separated by "|", each a name with optional Python-literal arguments:

    "decode|random_resized_crop(224, scale=(0.08, 1.0))|flip|color_jitter(p=0.8)|grayscale(0.2)|blur"

or a list of such op strings. An op is `op(data, rng) -> data` (see `augment.py`, which registers
the image ops and fills in the pipeline's defaults); this module knows nothing of images beyond
converting the last op's output to a uint8 array.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vicmae_jax.data.image_codec import to_array

Data = dict[str, Any]
Op = Callable[[Data, np.random.Generator], Data]

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Registers an op factory under `name` (used by specs)."""

  def decorator(factory: Callable[..., Op]) -> Callable[..., Op]:
    if name in _REGISTRY:
      raise ValueError(f"augmentation op {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory

  return decorator


def registered_ops() -> tuple[str, ...]:
  """Names usable in specs."""
  return tuple(sorted(_REGISTRY))


def parse_spec(spec: str | Sequence[str]) -> list[tuple[str, tuple, dict]]:
  """ "a|b(1, x=2)" or ["a", "b(1, x=2)"] -> [("a", (), {}), ("b", (1,), {"x": 2})]. Literals only."""
  if isinstance(spec, str):
    parts = [part.strip() for part in spec.split("|")]
  else:
    parts = [str(part).strip() for part in spec]
  ops = []
  for part in parts:
    if not part:
      raise ValueError(f"augmentation spec {spec!r} has an empty op")
    try:
      node = ast.parse(part, mode="eval").body
    except SyntaxError as error:
      raise ValueError(
        f"augmentation op {part!r} is not `name` or `name(args)`: {error}"
      ) from error
    if isinstance(node, ast.Name):
      ops.append((node.id, (), {}))
      continue
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise ValueError(f"augmentation op {part!r} is not `name` or `name(args)`")
    try:
      args = tuple(ast.literal_eval(arg) for arg in node.args)
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError as error:
      raise ValueError(f"augmentation op {part!r}: arguments must be Python literals") from error
    ops.append((node.func.id, args, kwargs))
  return ops


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A composed spec: `aug(image, rng) -> uint8 [S, S, 3]` (image: bytes, uint8 array or PIL image)."""

  spec: str
  ops: tuple[Op, ...]
  output_size: int | None

  def apply(self, data: Data, rng: np.random.Generator) -> Data:
    for op in self.ops:
      data = op(data, rng)
    return data

  def __call__(self, image: Any, rng: np.random.Generator) -> np.ndarray:
    out = np.ascontiguousarray(to_array(self.apply({"image": image}, rng)["image"]))
    if self.output_size is not None and out.shape[:2] != (self.output_size, self.output_size):
      raise ValueError(
        f"augmentation {self.spec!r} produced {out.shape}, expected [{self.output_size}, {self.output_size}, 3]"
      )
    return out


def compose(
  spec: str | Sequence[str],
  *,
  defaults: Mapping[str, Any] | None = None,
  op_defaults: Mapping[str, Mapping[str, Any]] | None = None,
  output_size: int | None = None,
) -> Augmentation:
  """Builds each op of `spec` from its registered factory, in order.

  An argument the spec leaves out comes from `op_defaults[name]`, else from `defaults` when the
  factory has a parameter of that name, else from the factory's own default. Raises ValueError
  naming the op for unknown names or bad arguments.
  """
  defaults = defaults or {}
  op_defaults = op_defaults or {}
  ops = []
  for name, args, kwargs in parse_spec(spec):
    if name not in _REGISTRY:
      raise ValueError(
        f"unknown augmentation op {name!r} in {spec!r}; known ops: {', '.join(registered_ops())}"
      )
    factory = _REGISTRY[name]
    signature = inspect.signature(factory)
    try:
      bound = signature.bind_partial(*args, **kwargs)
    except TypeError as error:
      raise ValueError(f"augmentation op {name!r}: {error}") from error
    arguments = dict(bound.arguments)
    for parameter in signature.parameters:
      if parameter in arguments:
        continue
      if parameter in op_defaults.get(name, {}):
        arguments[parameter] = op_defaults[name][parameter]
      elif parameter in defaults:
        arguments[parameter] = defaults[parameter]
    ops.append(factory(**arguments))
  text = spec if isinstance(spec, str) else "|".join(spec)
  return Augmentation(text, tuple(ops), output_size)
