"""Top-1 / top-5 of a classifier over one padded pass of the evaluation data (downstream trainers).

    config.eval = dict(every_steps=N)   # 0: at the end only

Its predictor is the trainer's `ClassifierScores` for the current state: batches in, summed
(top-1 hits, top-5 hits, valid examples) out; padding (`valid` False) is not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from absl import logging
import jax
import numpy as np

from vicmae_jax.evaluators import common


class ClassifierScores:
  """`eval_step(params, batch_stats, frozen_state, inputs, label, valid) -> (top1, top5, count)`
  bound to one state: `scores(batches)` sums it over global batches."""

  def __init__(self, eval_step: Callable, state: dict, frozen_state, to_global, input_key: str):
    self.eval_step, self.state, self.frozen_state = eval_step, state, frozen_state
    self.to_global, self.input_key = to_global, input_key

  def scores(self, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions) and the example count over one pass of `batches`."""
    key, totals = self.input_key, None
    for batch in batches:
      g = self.to_global({key: batch[key], "label": batch["label"], "valid": batch["valid"]})
      sums = self.eval_step(
        self.state["params"],
        self.state["batch_stats"],
        self.frozen_state,
        g[key],
        g["label"],
        g["valid"],
      )
      totals = sums if totals is None else tuple(a + b for a, b in zip(totals, sums))
    if totals is None:
      raise ValueError("the evaluation data yielded no batch")
    top1, top5, count = (float(x) for x in jax.device_get(totals))
    if count == 0:
      raise ValueError("the evaluation data has no valid example")
    return {"top1": top1 / count, "top5": top5 / count, "count": int(count)}


@common.register
class ClassificationEvaluator(common.Base):
  kind = "classification"
  at_start = False

  def __init__(self, name: str, cfg, *, eval_batches: Callable[[], Iterable] | None = None):
    super().__init__(name, cfg)
    self.eval_batches = eval_batches

  def run(self, predict: ClassifierScores) -> dict[str, float]:
    res = predict.scores(self.eval_batches())
    logging.info(
      "eval: top-1 %.4f, top-5 %.4f (%d examples)", res["top1"], res["top5"], res["count"]
    )
    return {"eval/top1": res["top1"], "eval/top5": res["top5"], "eval/count": res["count"]}
