"""Progressive DnD: 5 -> 3 -> 2 groups at 1/3 and 2/3 of the epochs, ResNet34 -> ResNet18, on Fashion-MNIST (not in the paper).

  python scripts/train.py --config configs/pdnd_fashion.py --workdir runs/pdnd_fashion

The teacher is loaded from runs/teacher_fashion/model, and trained first with
configs/teacher_fashion.py if it is not there (override with --config.teacher.checkpoint=...).
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("fashion_mnist", "pdnd")
  config.num_epochs = 20
  return config
