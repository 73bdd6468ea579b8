"""The packaged config `dnd_jax/configs/kd_fashion.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/kd_fashion.py` works from the repository root."""

from dnd_jax.configs.kd_fashion import get_config  # noqa: F401
