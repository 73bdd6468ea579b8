"""Jacobian+CE (Srinivas & Fleuret 2018), ResNet34 -> ResNet18, on Imagewoof (v2, 160 px) (paper Table 1).

  python scripts/train.py --config configs/jacobian_imagewoof.py --workdir runs/jacobian_imagewoof

The teacher is loaded from runs/teacher_imagewoof/model, and trained first with
configs/teacher_imagewoof.py if it is not there (override with --config.teacher.checkpoint=...).
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("imagewoof", "jacobian")
  config.num_epochs = 60
  return config
