"""Weights & Biases beside TensorBoard: `config.log.wandb` (project, entity, mode).

Off by default (an empty `project`) and never imported then; with a project, process 0 adds a
W&B writer to its clu writers, so every scalar (training windows, evaluations) and image that goes
to TensorBoard goes to W&B too, at the same step. The config is logged once, when a run starts at
step 0 (where TensorBoard gets its hparams). The W&B run id is kept in WORKDIR/wandb_run_id, so a
resumed run (the same command again) continues the same W&B run. Its files are under
WORKDIR/wandb; `mode="offline"` writes them without a network (`wandb sync WORKDIR/wandb/offline-run-*`
uploads them later), "disabled" turns W&B off without changing anything else.

Needs the `wandb` extra (`pip install 'vicmae_jax[wandb]'`); config_lib refuses a project without
it, before anything is compiled. Videos, audio and raw summaries are not written by this project's
loops; this writer leaves them to TensorBoard.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu.metric_writers import interface

MODES = ("online", "offline", "disabled")
RUN_ID_FILE = "wandb_run_id"


def enabled(wandb_cfg: Mapping[str, Any] | None) -> bool:
  return bool(wandb_cfg and wandb_cfg.get("project"))


class WandbWriter(interface.MetricWriter):
  """A clu MetricWriter writing to one W&B run (made or resumed in `__init__`)."""

  def __init__(self, workdir: str, *, project: str, entity: str = "", mode: str = "online"):
    import wandb

    self._wandb = wandb
    id_path = os.path.join(workdir, RUN_ID_FILE)
    if os.path.isfile(id_path):
      with open(id_path) as file:
        run_id = file.read().strip()
    else:
      run_id = secrets.token_hex(4)  # W&B ids: up to 64 characters of [a-z0-9_-]
      with open(id_path, "w") as file:
        file.write(run_id + "\n")
    self._run = wandb.init(
      project=project,
      entity=entity or None,
      mode=mode or "online",
      dir=workdir,
      id=run_id,
      resume="allow",
      name=os.path.basename(os.path.normpath(workdir)),
    )

  @property
  def run(self):
    return self._run

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._run.log({k: float(np.asarray(v)) for k, v in scalars.items()}, step=int(step))

  def write_images(self, step: int, images: Mapping[str, Any]):
    logged = {}
    for key, value in images.items():
      array = np.asarray(value)
      if array.ndim == 3:
        array = array[None]
      logged[key] = [self._wandb.Image(_as_uint8(image)) for image in array]
    self._run.log(logged, step=int(step))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._run.log({k: self._wandb.Html(f"<pre>{v}</pre>") for k, v in texts.items()}, step=step)

  def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None):
    logged = {}
    for key, value in arrays.items():
      bins = int((num_buckets or {}).get(key, 64))
      logged[key] = self._wandb.Histogram(np.asarray(value), num_bins=min(bins, 512))
    self._run.log(logged, step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._run.config.update(dict(hparams), allow_val_change=True)

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    pass  # not written by this project's loops (TensorBoard only)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    pass  # not written by this project's loops (TensorBoard only)

  def write_summaries(self, step: int, values: Mapping[str, Any], metadata=None):
    pass  # raw TensorBoard summaries have no W&B counterpart

  def flush(self):
    pass  # W&B streams each log call to its own service process

  def close(self):
    self._run.finish()


def _as_uint8(image: np.ndarray) -> np.ndarray:
  if image.dtype == np.uint8:
    return image
  return np.clip(np.round(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def make_writer(workdir: str, wandb_cfg: Mapping[str, Any]) -> WandbWriter:
  return WandbWriter(
    workdir,
    project=str(wandb_cfg.get("project")),
    entity=str(wandb_cfg.get("entity") or ""),
    mode=str(wandb_cfg.get("mode") or "online"),
  )
