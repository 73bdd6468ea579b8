"""The packaged config `dnd_jax/configs/at_fashion.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/at_fashion.py` works from the repository root."""

from dnd_jax.configs.at_fashion import get_config  # noqa: F401
