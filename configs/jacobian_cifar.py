"""The packaged config `dnd_jax/configs/jacobian_cifar.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/jacobian_cifar.py` works from the repository root."""

from dnd_jax.configs.jacobian_cifar import get_config  # noqa: F401
