"""Teacher training: ResNet34 with cross-entropy, on ImageNet (streamed).

  python scripts/train.py --config configs/teacher_imagenet.py --workdir runs/teacher_imagenet \
    --config.data.dir=/data/imagenet

The field's ImageNet teacher is torchvision's published ResNet34 (73.3% top-1), imported rather
than trained: `python scripts/import_torch_teacher.py --checkpoint resnet34-b627a593.pth --config
configs/kd_imagenet.py` writes it where the distillation configs load it (docs/running.md,
"ImageNet"). This config trains one instead: torchvision's 90 epochs at batch 256, with the
project's OneCycle schedule at the paper's Imagewoof lr scaled to the batch (`imagenet_config`).
"""

from dnd_jax.configs import imagenet_config


def get_config():
  return imagenet_config("teacher", 90)
