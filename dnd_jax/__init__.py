"""dnd_jax: Divide and Distill (DnD) and Progressive DnD knowledge distillation in JAX/Flax."""

__version__ = "0.1.0"
