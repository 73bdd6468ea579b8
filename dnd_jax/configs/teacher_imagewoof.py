"""Teacher training: ResNet34 with cross-entropy, on Imagewoof (v2, 160 px) (paper Table 1).

  python scripts/train.py --config configs/teacher_imagewoof.py --workdir runs/teacher_imagewoof
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("imagewoof", "teacher")
  config.num_epochs = 200
  return config
