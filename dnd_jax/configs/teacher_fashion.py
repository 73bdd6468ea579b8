"""Teacher training: ResNet34 with cross-entropy, on Fashion-MNIST (not in the paper).

  python scripts/train.py --config configs/teacher_fashion.py --workdir runs/teacher_fashion
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("fashion_mnist", "teacher")
  config.num_epochs = 30
  return config
