"""DnD: five groups {1}{2}{3}{4}{5}, ResNet34 -> ResNet18, on ImageNet (streamed).

  python scripts/train.py --config configs/dnd_imagenet.py --workdir runs/dnd_imagenet \
    --config.data.dir=/data/imagenet

The paper's Imagewoof setting scaled to ImageNet: the ImageNet stem, batch 256 with the paper's
learning rate scaled by the batch (64 -> 256: x4, the README's rule), and 100 epochs (mdistiller's
ImageNet budget). The teacher is loaded from runs/teacher_imagenet/model: import torchvision's
ResNet34 there (docs/running.md, "ImageNet"), or it is trained first with
configs/teacher_imagenet.py.
"""

from dnd_jax.configs import base_config


def get_config():
  config = base_config("imagenet", "dnd")
  config.num_epochs = 100
  config.optim.lr *= config.batch_size / 64
  return config
