"""Entry point of `python -m vicmae_jax.convert` (see `cli`)."""

from vicmae_jax.convert.cli import main

raise SystemExit(main())
