"""Progressive DnD: 5 -> 3 -> 2 groups at 1/3 and 2/3 of the epochs, ResNet34 -> ResNet18, on Imagewoof (v2, 160 px) (paper Table 1).

  python scripts/train.py --config configs/pdnd_imagewoof.py --workdir runs/pdnd_imagewoof

The teacher is loaded from runs/teacher_imagewoof/model, and trained first with
configs/teacher_imagewoof.py if it is not there (override with --config.teacher.checkpoint=...).
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("imagewoof", "pdnd")
  config.num_epochs = 60
  return config
