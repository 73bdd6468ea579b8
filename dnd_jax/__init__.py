"""dnd_jax: Divide and Distill (DnD) and Progressive DnD knowledge distillation in JAX/Flax."""

from dnd_jax import logs as _logs  # noqa: F401 - the package's log lines reach stderr on import

__version__ = "0.1.0"
