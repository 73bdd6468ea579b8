"""The packaged config `dnd_jax/configs/quickstart.py` (read its docstring); kept here so that
`python scripts/train.py --config configs/quickstart.py` works from the repository root."""

from dnd_jax.configs.quickstart import get_config  # noqa: F401
