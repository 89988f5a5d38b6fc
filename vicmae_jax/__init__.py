"""vicmae_jax: ViC-MAE (contrastive masked autoencoders) pretraining and evaluation in JAX/Flax."""

__version__ = "0.1.0"
