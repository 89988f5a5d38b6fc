"""benchmarks/compare_official.py without torch: our side of the comparison on a tiny model, its report, its errors.

The official side needs torch and a clone of the official repository, neither of which the tests use; the
script's `--skip_official` mode builds, compiles and times our full train step alone. It runs in a subprocess
because the script pins its process to `--threads` CPUs.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "compare_official.py")

TINY = [
  "--image_size=16",
  "--patch_size=8",
  "--embed_dim=16",
  "--depth=1",
  "--num_heads=2",
  "--decoder_embed_dim=8",
  "--decoder_depth=1",
  "--decoder_num_heads=2",
  "--projector_hidden_dim=16",
  "--projector_out_dim=8",
  "--batch=4",
]


def _load_script():
  spec = importlib.util.spec_from_file_location("compare_official", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_skip_official_times_our_step_and_reports_consistent_numbers(tmp_path):
  out = tmp_path / "result.json"
  # A `torch` that fails on import proves the JAX side does not need it.
  (tmp_path / "no_torch" / "torch").mkdir(parents=True)
  (tmp_path / "no_torch" / "torch" / "__init__.py").write_text(
    "raise ImportError('torch is not installed')\n"
  )
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "no_torch"), env.get("PYTHONPATH", "")])
  env.pop(
    "XLA_FLAGS", None
  )  # the script sets its own; the test suite's 8 fake devices are not needed
  cmd = [
    sys.executable,
    SCRIPT,
    "--skip_official",
    *TINY,
    "--threads=1",
    "--warmup=1",
    "--steps=2",
    "--repeats=3",
    f"--json_out={out}",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())

  assert "official" not in result and "ratio" not in result
  assert result["threads"] == 1 and len(result["cpus"]) == 1
  assert "--xla_cpu_multi_thread_eigen=true" in result["thread_setup"]["xla"]
  assert result["config"]["embed_dim"] == 16 and result["config"]["batch_pairs"] == 4
  ours = result["ours"]
  steps = ours["steps_ms"]
  assert [len(rep) for rep in steps] == [2, 2, 2]  # repeats x steps, each timed
  flat = [t for rep in steps for t in rep]
  assert all(t > 0 for t in flat)
  assert ours["median_ms"] == pytest.approx(statistics.median(flat))
  assert ours["repeat_medians_ms"] == pytest.approx([statistics.median(rep) for rep in steps])
  assert ours["repeat_median_spread_ms"] == pytest.approx(
    [min(ours["repeat_medians_ms"]), max(ours["repeat_medians_ms"])]
  )
  assert np.isfinite(ours["loss_after_warmup"]) and np.isfinite(ours["loss_last"])
  # AdamW steps with fresh masks change the loss; an update that never applied would leave the
  # first-step loss of the same state and noise only by chance equal.
  assert ours["loss_last"] != ours["loss_after_warmup"]
  assert f"median {ours['median_ms']:8.1f} ms/step" in proc.stdout


def test_summarize_by_hand():
  script = _load_script()
  summary = script.summarize(
    [[0.010, 0.030, 0.020], [0.050, 0.040, 0.060]], [[0.001, 0.002, 0.003], [0.004, 0.005, 0.006]]
  )
  assert summary["median_ms"] == pytest.approx(35.0)  # median of 10..60 ms
  assert summary["repeat_medians_ms"] == pytest.approx([20.0, 50.0])
  assert summary["repeat_median_spread_ms"] == pytest.approx([20.0, 50.0])
  assert summary["min_ms"] == pytest.approx(10.0) and summary["max_ms"] == pytest.approx(60.0)
  assert summary["cpu_median_ms"] == pytest.approx(3.5)


def test_defaults_and_argument_errors_name_the_flag(capsys):
  script = _load_script()
  args = script.parse_args(["--skip_official"])
  assert (args.image_size, args.patch_size, args.embed_dim, args.depth, args.num_heads) == (
    64,
    8,
    192,
    6,
    3,
  )
  assert (args.decoder_embed_dim, args.decoder_depth, args.batch, args.threads) == (128, 2, 32, 2)
  for argv, message in (
    ([], "--official_repo is required"),
    (["--official_repo=/nonexistent/ViC-MAE"], "--official_repo=/nonexistent/ViC-MAE"),
    (["--skip_official", "--steps=0"], "--steps must be >= 1"),
  ):
    with pytest.raises(SystemExit):
      script.parse_args(argv)
    assert message in capsys.readouterr().err


def test_gpu_device_is_refused_without_a_gpu():
  """--device=gpu (both sides in their own mixed-precision recipes) needs jax on a GPU."""
  module = _load_script()
  with pytest.raises(SystemExit, match="--device=gpu: jax runs on 'cpu', not a GPU"):
    module.main(["--skip_official", "--device=gpu", *TINY])
  args = module.parse_args(["--skip_official", "--device=gpu", *TINY])
  assert module.model_config(args)["dtype"] == "bfloat16"
  assert module.model_config(module.parse_args(["--skip_official", *TINY]))["dtype"] == "float32"
