"""Evaluators as plug-ins: one protocol for every trainer, built from `config.evals.<name>`.

    config.evals.<name> = dict(kind=<registered kind; default: the name>, every_steps=N, ...)

Each evaluator is made by `build(evals_cfg, **context)` from its kind's class in `REGISTRY` and
answers two questions: `due(step, total_steps)` (at step 0 when `at_start`, every `every_steps`
steps, and at the end; never when `every_steps < 0`) and `run(predict) -> {metric: value}`, where
`predict` is what the trainer hands over for the current state (a frozen-feature function for
pretraining, the eval step for the classification trainers). `common.run_loop` calls them and
writes their metrics; a new evaluator is one class with `kind = "..."` registered here.

Context (keyword arguments of `build`, passed to every evaluator that takes them):
  image_size, seed, batch_size (the default eval batch), features (a FeatureCache shared by the
  frozen-feature evaluators of one run, so kNN and the linear probe extract features once).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

from vicmae_jax import config_lib


class Evaluator(Protocol):
  name: str

  def due(self, step: int, total_steps: int) -> bool: ...

  def run(self, predict: Any) -> dict[str, float]: ...


class Base:
  """Scheduling shared by the evaluators: `every_steps` (< 0: never; 0: start and end only)."""

  kind = ""
  at_start = True  # also at step 0 (before training: the baseline of a pretraining run)

  def __init__(self, name: str, cfg):
    self.name, self.cfg = name, cfg
    self.every_steps = int(cfg.get("every_steps", 0))

  def due(self, step: int, total_steps: int) -> bool:
    if self.every_steps < 0:
      return False
    if step == total_steps or (step == 0 and self.at_start):
      return True
    return bool(self.every_steps) and step > 0 and step % self.every_steps == 0


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
  REGISTRY[cls.kind] = cls
  return cls


def _load_registry() -> None:
  # Importing the modules registers their kinds.
  from vicmae_jax.evaluators import attentive, classification, frozen  # noqa: F401


def build(evals_cfg, **context) -> list[Evaluator]:
  """One evaluator per `evals_cfg` entry; an unknown kind is a ConfigError naming the field."""
  _load_registry()
  evaluators = []
  for name in evals_cfg.keys():
    cfg = evals_cfg[name]
    kind = str(cfg.get("kind", name))
    if kind not in REGISTRY:
      raise config_lib.ConfigError(
        f"evals.{name}",
        f"unknown evaluator kind {kind!r}{config_lib.suggest(kind, REGISTRY)}; "
        f"known: {', '.join(sorted(REGISTRY))}",
      )
    cls = REGISTRY[kind]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in context.items() if k in accepted}
    evaluators.append(cls(name, cfg, **kwargs))
  return evaluators


def run_due(
  evaluators: list[Evaluator], step: int, total_steps: int, predict: Callable[[], Any]
) -> dict[str, float]:
  """Runs every evaluator due at `step`; `predict()` makes the predictor once, if any is due."""
  due = [e for e in evaluators if e.due(step, total_steps)]
  results: dict[str, float] = {}
  if due:
    predictor = predict()
    for evaluator in due:
      results.update(evaluator.run(predictor))
  return results
