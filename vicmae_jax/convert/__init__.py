"""Official PyTorch ViC-MAE / MAE checkpoints <-> our parameters.

  pth       `.pth` files read and written without torch
  mapping   official state-dict names <-> our parameter paths, and each one's layout change
  load      official state dict -> our parameter tree (architecture read off the checkpoint)
  export    our parameter tree -> official state dict
  cli       `python -m vicmae_jax.convert`: `.pth` <-> orbax checkpoint directories

The names below are the package's interface; import them from `vicmae_jax.convert`.
"""

from vicmae_jax.convert.cli import SIDECAR, convert_checkpoint, export_checkpoint, main
from vicmae_jax.convert.export import ours_to_official, tree_kind
from vicmae_jax.convert.load import (
  abstract_tree,
  detect_kind,
  extract_state_dict,
  infer_model_config,
  initial_tree,
  load_into_model,
  official_to_ours,
)
from vicmae_jax.convert.mapping import (
  KINDS,
  ConversionError,
  Entry,
  official_entries,
  official_order,
  official_shape,
  to_official,
  to_ours,
)
from vicmae_jax.convert.pth import OpaqueObject, PthFormatError, load_pth, save_pth

# The layout changes under their earlier names.
_to_ours = to_ours
_to_official = to_official

__all__ = [
  "KINDS",
  "SIDECAR",
  "ConversionError",
  "Entry",
  "OpaqueObject",
  "PthFormatError",
  "abstract_tree",
  "convert_checkpoint",
  "detect_kind",
  "export_checkpoint",
  "extract_state_dict",
  "infer_model_config",
  "initial_tree",
  "load_into_model",
  "load_pth",
  "main",
  "official_entries",
  "official_order",
  "official_shape",
  "official_to_ours",
  "ours_to_official",
  "save_pth",
  "to_official",
  "to_ours",
  "tree_kind",
]
