"""Shared test settings: tiny models on CPU, strict shapes, no persistent compile cache writes."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
