"""Progressive DnD (5 -> 3 -> 2 groups), ResNet34 -> ResNet18, on ImageNet (streamed).

  python scripts/train.py --config configs/pdnd_imagenet.py --workdir runs/pdnd_imagenet \
    --config.data.dir=/data/imagenet

The paper's Imagewoof setting scaled to ImageNet, for 100 epochs (`imagenet_config`). The teacher
is loaded from runs/teacher_imagenet/model: import torchvision's ResNet34 there (docs/running.md,
"ImageNet"), or it is trained first with configs/teacher_imagenet.py.
"""

from dnd_jax.configs import imagenet_config


def get_config():
  return imagenet_config("pdnd", 100)
