"""DnD: five groups {1}{2}{3}{4}{5}, ResNet34 -> ResNet18, on CIFAR-100 (paper Table 2).

  python scripts/train.py --config configs/dnd_cifar.py --workdir runs/dnd_cifar

The teacher is loaded from runs/teacher_cifar/model, and trained first with
configs/teacher_cifar.py if it is not there (override with --config.teacher.checkpoint=...).
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("cifar100", "dnd")
  config.num_epochs = 60
  return config
