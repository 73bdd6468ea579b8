"""Quickstart: teacher + Progressive DnD on Fashion-MNIST, sized for a 2-core CPU (2-3 minutes).

  python scripts/train.py --config configs/quickstart.py

trains the narrow ResNet34 teacher first (into runs/quickstart_teacher, once), then distils a
narrow ResNet18 student with Progressive DnD on 16x16 Fashion-MNIST, and prints both accuracies.
`configs/quickstart.py:teacher` is the teacher's own config.
"""

from dnd_jax.configs import base_config

WIDTH = 8
IMAGE_SIZE = 16


def _shrink(config):
  config.data.image_size = IMAGE_SIZE
  # At 16 px a 2-pixel crop and flips are strong augmentation for a few hundred steps.
  config.data.crop_padding = 1
  config.data.flip = False
  config.model.width = WIDTH  # the teacher it trains follows: --config.model.width=4 sets both
  config.eval_batch_size = 1000
  return config


def get_config(arg=None):
  if arg == "teacher":
    config = _shrink(base_config("fashion_mnist", "teacher"))
    config.num_epochs = 1
    return config
  config = _shrink(base_config("fashion_mnist", "pdnd"))
  config.data.fraction = 0.25
  config.num_epochs = 3
  config.teacher.checkpoint = "runs/quickstart_teacher/model"
  config.teacher.config = "configs/quickstart.py:teacher"
  return config
