"""The packaged config `dnd_jax/configs/pdnd_imagewoof.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/pdnd_imagewoof.py` works from the repository root."""

from dnd_jax.configs.pdnd_imagewoof import get_config  # noqa: F401
