"""Launchers: Cloud TPU VM slices and pods (`python -m launch.tpu`), multi-node GPU scripts."""
