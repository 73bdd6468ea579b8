"""Progressive DnD: 5 -> 3 -> 2 groups at 1/3 and 2/3 of the epochs, ResNet34 -> ResNet18, on CIFAR-100 (paper Table 2).

  python scripts/train.py --config configs/pdnd_cifar.py --workdir runs/pdnd_cifar

The teacher is loaded from runs/teacher_cifar/model, and trained first with
configs/teacher_cifar.py if it is not there (override with --config.teacher.checkpoint=...).
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("cifar100", "pdnd")
  config.num_epochs = 60
  return config
