"""benchmarks/device_check.sh end to end at its tiny sizes on CPU (the fallback of every section)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_runs_every_section_at_tiny_sizes(tmp_path):
  env = dict(os.environ, DEVICE_CHECK_SIZE="tiny", JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a one-GPU host
  env.pop("OFFICIAL_REPO", None)
  proc = subprocess.run(
    ["bash", os.path.join(REPO, "benchmarks", "device_check.sh"), str(tmp_path / "out")],
    env=env,
    capture_output=True,
    text=True,
    timeout=1500,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = tmp_path / "out"
  summary = json.loads((out / "summary.json").read_text())
  assert summary["size"] == "tiny" and summary["platform"] == "cpu"
  status = summary["status"]
  for name in ("step_b16", "step_l16", "input", "throughput"):
    assert status[name] == "0", (name, (out / f"{name}.log").read_text()[-2000:])
  assert status["official"] == "skipped"  # no OFFICIAL_REPO given
  rows = summary["sections"]["step_b16"]
  assert sorted(r["activation_dtype"] for r in rows) == ["bfloat16", "float32"]
  for r in rows + summary["sections"]["step_l16"]:
    assert r["attention_impl"] == "xla"  # no cudnn without a GPU
    assert r["pairs_per_s"] > 0 and r["xla_bytes_per_step"] > 0 and r["compiled_peak_gib"] > 0
    assert r["flops_per_byte"] == pytest.approx(r["flops_per_step"] / r["xla_bytes_per_step"])
  throughput = summary["sections"]["throughput"]
  assert set(throughput["rows"]) == {
    "step_alone",
    "step_ranked",
    "loader_alone",
    "loop_in_memory",
    "loop_real",
  }
  rows = throughput["rows"]
  assert throughput["rank_cost"] == pytest.approx(
    rows["step_ranked"]["step_ms"] / rows["step_alone"]["step_ms"] - 1.0
  )
  for name, row in throughput["rows"].items():
    ratio = throughput["ratios"][f"{name} / step_alone"]
    assert ratio == pytest.approx(
      row["pairs_per_s"] / throughput["rows"]["step_alone"]["pairs_per_s"]
    )
  assert summary["sections"]["input"] is not None
  text = (out / "summary.txt").read_text()
  assert "[throughput] exit 0" in text and "loop overhead" in text
