"""Fingerprint of what makes CPU runs of the demo give different numbers on different machines.

    python benchmarks/cpu_fingerprint.py                                  # library and XLA fingerprint
    python benchmarks/cpu_fingerprint.py --demo_root=~/.cache/vicmae_jax/demo_digits   # + data and batches
    NPROC=1 python benchmarks/cpu_fingerprint.py                          # XLA with 1 thread per op

Prints the versions of the libraries the demo's numbers depend on, the CPU's vector extensions, the
XLA CPU threads per op (NPROC, else one per core it may run on), and short hashes of:

  xla.*       results of single ops the train step is made of, on fixed inputs: a weight-gradient
              shaped matmul (x.T @ x over 4,736 rows), a sum over rows, exp and GELU. The reductions
              change with the thread count, the elementwise ops with the CPU's vector code.
  data        with --demo_root: the built demo dataset (every file but the ones naming its own path)
  batches     with --demo_root: the first three pretraining batches of configs/demo.py

Equal hashes on two machines mean that part cannot explain a difference in the demo's figures.
benchmarks/RESULTS.md lists the values of the machine that measured the README's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
LIBRARIES = ("jax", "jaxlib", "numpy", "opencv-python-headless", "av", "pillow", "simplejpeg")
LIBRARIES += ("scikit-learn", "scikit-image", "grain", "flax", "optax")


def short_hash(*arrays) -> str:
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:12]


def cpu_line() -> str:
  name, flags = "unknown", set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as file:
      for line in file:
        if line.startswith("model name") and name == "unknown":
          name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  vector = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
  return f"{name}; {' '.join(vector) or 'no AVX2'}"


def xla_fingerprint() -> dict[str, str]:
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.standard_normal((4736, 64)).astype(np.float32))
  ops = {
    "xla.matmul_xtx": lambda x: x.T @ x,
    "xla.sum_rows": lambda x: x.sum(axis=0),
    "xla.exp": jnp.exp,
    "xla.gelu": lambda x: jax.nn.gelu(x, approximate=False),
  }
  return {name: short_hash(np.asarray(jax.jit(op)(tokens))) for name, op in ops.items()}


def data_fingerprint(root: str) -> dict[str, str]:
  """Content hashes of the demo dataset and of the first three pretraining batches."""
  digest = hashlib.sha256()
  count = 0
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      relative = os.path.relpath(os.path.join(directory, name), root)
      # The meta json and shard states name the dataset's own directory; the lock is empty.
      if name.endswith("_meta.json") or name.startswith(".") or name == "demo_complete.json":
        continue
      with open(os.path.join(directory, name), "rb") as file:
        digest.update(relative.encode() + b"\0" + hashlib.sha256(file.read()).digest())
      count += 1
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import demo as demo_config

  from vicmae_jax.data import pipeline

  config = demo_config.get_config()
  config.demo_data.root = root
  loader = pipeline.make_pretrain_loader(
    config.data,
    global_batch_size=config.batch_size,
    image_size=config.image_size,
    seed=config.seed,
    process_index=0,
    process_count=1,
  )
  iterator = iter(loader)
  batches = [next(iterator) for _ in range(3)]
  return {
    "data": f"{digest.hexdigest()[:12]} ({count} files)",
    "batches": short_hash(*[b["views"] for b in batches], *[b["label"] for b in batches]),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--demo_root", default="", help="a built demo dataset (demo_data.root)")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  for library in LIBRARIES:
    try:
      version = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
      version = "-"
    print(f"{library:24s} {version}")
  print(f"{'cpu':24s} {cpu_line()}")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(
    f"{'xla threads per op':24s} {os.environ.get('NPROC') or cores} (NPROC, else cores: {cores})"
  )
  print(f"{'XLA_FLAGS':24s} {os.environ.get('XLA_FLAGS', '')}")
  for name, value in xla_fingerprint().items():
    print(f"{name:24s} {value}")
  if args.demo_root:
    for name, value in data_fingerprint(os.path.expanduser(args.demo_root)).items():
      print(f"{name:24s} {value}")


if __name__ == "__main__":
  main()
