"""Export a trained dnd_jax network as a PyTorch state_dict in torchvision's layout (a network of
`config.model.arch`: in its published definition's layout).

  python scripts/export_torch_student.py --workdir runs/pdnd_cifar [--output student.pt] [--best]

Reads <workdir>/model (the final model) or, with --best, the checkpoint of the epoch with the best
evaluation accuracy, and writes a `torch.save`d state_dict (default <workdir>/student.pt, or
student_best.pt with --best) that torchvision's resnet18/34 loads with strict=True; for the CIFAR
stem, replace conv1 and maxpool first (docs/torch_bridge.md shows how).
"""

import os
import sys

from absl import flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import checkpoints, cli  # noqa: E402
from dnd_jax.torch_bridge import export_student  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run folder written by scripts/train.py.")
flags.DEFINE_string("output", None, "The .pt file to write; default <workdir>/student.pt "
                    "(student_best.pt with --best).")
flags.DEFINE_bool("best", False, "Export the best-accuracy epoch's model instead of the final one.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  path, info = export_student(FLAGS.workdir, FLAGS.output, FLAGS.best)
  if info.get("arch"):  # a network of models.ARCHS: its published PyTorch definition's layout
    print(f"Wrote {path}: {checkpoints.describe(info)}, {info['num_classes']} classes, "
          f"{info['in_channels']} input channels, in the state_dict layout of its RepDistiller / "
          "mdistiller definition (docs/models.md), which loads it with strict=True.")
    return
  depth, nc, width = info["depth"], info["num_classes"], info["width"]
  print(f"Wrote {path}: ResNet{depth}, {info['stem']} stem, width {width}, {nc} classes, "
        f"{info['in_channels']} input channels.")
  lines = ["Load it in PyTorch with:", "  import torch, torchvision",
           f"  model = torchvision.models.resnet{depth}(num_classes={nc})"]
  if width != 64:
    lines = ["Load it with dnd_jax/torch_reference.py (torchvision has no width option):",
             f"  model = torch_reference.build_resnet({depth}, {nc}, width={width}, "
             f"stem={info['stem']!r}, in_channels={info['in_channels']})"]
  else:
    if info["stem"] == "cifar":
      lines.append(f"  model.conv1 = torch.nn.Conv2d({info['in_channels']}, 64, 3, 1, 1, bias=False)")
      lines.append("  model.maxpool = torch.nn.Identity()")
    elif info["in_channels"] != 3:
      lines.append(f"  model.conv1 = torch.nn.Conv2d({info['in_channels']}, 64, 7, 2, 3, bias=False)")
  lines.append(f"  model.load_state_dict(torch.load({path!r}), strict=True)")
  print("\n".join(lines))


if __name__ == "__main__":
  cli.run(main)
