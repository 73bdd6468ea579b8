"""Teacher training: ResNet34 with cross-entropy, on CIFAR-100 (paper Table 2).

  python scripts/train.py --config configs/teacher_cifar.py --workdir runs/teacher_cifar
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("cifar100", "teacher")
  config.num_epochs = 200
  return config
