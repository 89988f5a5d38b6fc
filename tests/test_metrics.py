"""TrainLogger: window averages, event counts (skipped examples) and the NaN check."""

import json
import math

import pytest

from vicmae_jax import metrics


def test_window_averages_and_event_counts_reach_metrics_jsonl(tmp_path):
  logger = metrics.TrainLogger(str(tmp_path), total_steps=4, global_batch=8)
  for step, (loss, skipped) in enumerate([(1.0, 0), (3.0, 2), (5.0, 1), (7.0, 0)], start=1):
    logger.add({"loss": loss})
    logger.count("data/skipped", skipped)
    if step % 2 == 0:
      logger.flush(step)
  logger.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4]
  assert [r["train/loss"] for r in rows] == [2.0, 6.0]
  assert [r["data/skipped"] for r in rows] == [2.0, 1.0]  # per window
  assert [r["data/skipped_total"] for r in rows] == [2.0, 3.0]  # running total
  assert logger.counted("data/skipped") == 3
  assert logger.history[-1]["data/skipped_total"] == 3.0


def test_a_resumed_logger_drops_the_killed_runs_lines_past_its_checkpoint(tmp_path):
  first = metrics.TrainLogger(str(tmp_path), total_steps=8, global_batch=8)
  for step in range(1, 7):
    first.add({"loss": float(step)})
    first.flush(step)
  first.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "train/lo')  # a line torn by the kill
  # The checkpoint was at step 4: the resumed run re-does 5 and 6 with the same data.
  second = metrics.TrainLogger(str(tmp_path), total_steps=8, global_batch=8, start_step=4)
  for step in (5, 6):
    second.add({"loss": 10.0 * step})
    second.flush(step)
  second.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r["train/loss"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 50.0, 60.0]
  assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_sampled_metrics_average_over_the_steps_that_measured_them(tmp_path):
  logger = metrics.TrainLogger(str(tmp_path), total_steps=3, global_batch=8)
  nan = float("nan")
  for loss, rank in [(1.0, nan), (2.0, nan), (3.0, 6.0)]:
    metrics.check_finite({"loss": loss, "health/z_rank": rank}, 1)  # NaN here is no fault
    logger.add({"loss": loss, "health/z_rank": rank})
  logger.flush(3)
  logger.add({"loss": 4.0, "health/z_rank": nan})
  logger.flush(4)  # a window without a measurement writes none
  logger.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[0]["train/loss"] == 2.0 and rows[0]["train/health/z_rank"] == 6.0
  assert rows[1]["train/loss"] == 4.0 and "train/health/z_rank" not in rows[1]
  with pytest.raises(FloatingPointError, match="health/z_std=nan"):
    metrics.check_finite({"health/z_std": nan}, 1)  # an every-step monitor's NaN is one
  with pytest.raises(FloatingPointError, match="health/z_rank=inf"):
    metrics.check_finite({"health/z_rank": math.inf}, 1)


def test_check_finite_names_the_bad_metrics():
  metrics.check_finite({"loss": 1.0, "grad_norm": 2.0}, 3)
  with pytest.raises(FloatingPointError, match=r"at step 7: grad_norm=inf, loss=nan\."):
    metrics.check_finite({"loss": math.nan, "grad_norm": math.inf, "lr": 0.1}, 7)
