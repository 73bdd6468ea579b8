"""The packaged config `dnd_jax/configs/pdnd_imagenet.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/pdnd_imagenet.py` works from the repository root."""

from dnd_jax.configs.pdnd_imagenet import get_config  # noqa: F401
