"""The packaged config `dnd_jax/configs/kd_imagenet.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/kd_imagenet.py` works from the repository root."""

from dnd_jax.configs.kd_imagenet import get_config  # noqa: F401
