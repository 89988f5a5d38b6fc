"""The package: pyproject's dependencies agree with requirements.txt; the wheel's commands run."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
  "vicmae-train": "vicmae_jax.main:entry",
  "vicmae-prepare": "vicmae_jax.data.prepare:cli",
  "vicmae-convert": "vicmae_jax.convert.cli:main",
  "vicmae-export": "vicmae_jax.export:cli",
}


def _pyproject():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
    return tomllib.load(file)["project"]


def _requirements():
  with open(os.path.join(ROOT, "requirements.txt")) as file:
    lines = [line.split("#", 1)[0].strip() for line in file]
  return [line for line in lines if line]


def _name(spec):
  return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_declares_what_requirements_txt_installs():
  project = _pyproject()
  declared = project["dependencies"] + project["optional-dependencies"]["dev"]
  assert sorted(declared) == sorted(_requirements())  # same names, same version bounds
  assert {"torch", "beam", "wandb"} <= set(project["optional-dependencies"])
  assert project["scripts"] == COMMANDS


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The wheel, built from a copy of the sources, installed (without dependencies, which the
  system site-packages provide) into a fresh venv."""
  tmp = tmp_path_factory.mktemp("package")
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(
    os.path.join(ROOT, "vicmae_jax"),
    src / "vicmae_jax",
    ignore=shutil.ignore_patterns("__pycache__"),
  )
  run = dict(check=True, capture_output=True, text=True, cwd=tmp)
  subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
     str(tmp / "dist"), str(src)],
    **run,
  )  # fmt: skip
  (wheel,) = (tmp / "dist").glob("vicmae_jax-*.whl")
  venv = tmp / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], **run)
  python = venv / "bin" / "python"
  subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], **run)
  return {"wheel": wheel, "venv": venv, "python": python, "tmp": tmp}


@pytest.mark.slow
def test_the_wheel_declares_dependencies_and_commands(installed):
  with zipfile.ZipFile(installed["wheel"]) as wheel:
    names = wheel.namelist()
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    entry_text = wheel.read(entry_points).decode()
    metadata_text = wheel.read(metadata).decode()
  for command, target in COMMANDS.items():
    assert f"{command} = {target}" in entry_text
  requires = [
    line.split(": ", 1)[1]
    for line in metadata_text.splitlines()
    if line.startswith("Requires-Dist: ")
  ]
  plain = [r for r in requires if ";" not in r]
  assert sorted(_name(r) for r in plain) == sorted(_name(d) for d in _pyproject()["dependencies"])
  for extra, package in (("beam", "apache-beam"), ("wandb", "wandb"), ("torch", "torch")):
    assert any(_name(r) == package and f'extra == "{extra}"' in r for r in requires), extra
  assert "vicmae_jax/data/prepare_beam.py" in names and "vicmae_jax/export.py" in names
  assert not any(n.startswith(("tests/", "configs/", "launch/")) for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_runs_its_help(installed, command):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
  result = subprocess.run(
    [str(installed["venv"] / "bin" / command), "--help"],
    capture_output=True,
    text=True,
    cwd=installed["tmp"],  # not the checkout: the command runs the installed package
    env=env,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--" in result.stdout and ("usage" in result.stdout.lower() or "flags" in result.stdout)
  where = subprocess.run(
    [str(installed["python"]), "-c", "import vicmae_jax; print(vicmae_jax.__file__)"],
    capture_output=True,
    text=True,
    cwd=installed["tmp"],
    env=env,
    check=True,
  ).stdout.strip()
  assert where.startswith(str(installed["venv"]))


@pytest.mark.slow
def test_vicmae_train_runs_the_tiny_demo(installed, demo_root):
  workdir = installed["tmp"] / "workdir"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
  result = subprocess.run(
    [
      str(installed["venv"] / "bin" / "vicmae-train"),
      f"--config={os.path.join(ROOT, 'configs', 'demo.py')}:tiny",
      f"--workdir={workdir}",
      f"--config.demo_data.root={demo_root}",
    ],
    capture_output=True,
    text=True,
    cwd=installed["tmp"],
    env=env,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Done:" in result.stderr
  with open(workdir / "metrics.jsonl") as file:
    steps = [line for line in file if '"train/loss"' in line]
  assert steps and os.path.isdir(workdir / "checkpoints")
