"""DnD: five groups {1}{2}{3}{4}{5}, ResNet34 -> ResNet18, on Fashion-MNIST (not in the paper).

  python scripts/train.py --config configs/dnd_fashion.py --workdir runs/dnd_fashion

The teacher is loaded from runs/teacher_fashion/model, and trained first with
configs/teacher_fashion.py if it is not there (override with --config.teacher.checkpoint=...).
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("fashion_mnist", "dnd")
  config.num_epochs = 20
  return config
