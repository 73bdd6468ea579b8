"""Import a PyTorch (torchvision-layout) ResNet teacher so a distillation config loads it.

  python scripts/import_torch_teacher.py --checkpoint teacher.pt --config configs/pdnd_cifar.py

The weights must be the config's teacher (config.teacher's depth, width and stem where set, else
what a teacher trained for the config would be: the student's width and stem, the depth of
config.teacher.config's model block) for the config's data set (its number of classes and
input channels); any mismatch names the offending key. The
model is written to config.teacher.checkpoint (override with --config.teacher.checkpoint=DIR, or
write elsewhere with --output DIR), where scripts/train.py with the same config then finds it.
A folder that holds a model already is refused unless --overwrite (a training run's always is).
`teacher.pt` is a `torch.save(model.state_dict())` file, or a checkpoint dict holding one under
"state_dict", "model" or "model_state_dict"; a DataParallel "module." prefix is removed.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import checkpoints, cli  # noqa: E402
from dnd_jax.torch_bridge import import_teacher  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The distillation (or any) config whose teacher "
                                "this is, e.g. configs/pdnd_cifar.py.", lock_config=True)
flags.DEFINE_string("checkpoint", None, "The PyTorch checkpoint (.pt / .pth) to import.")
flags.DEFINE_string("output", None, "Folder to write the model to; default "
                    "config.teacher.checkpoint.")
flags.DEFINE_bool("overwrite", False, "Replace a model the output folder holds already (never "
                  "a training run's).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
  config = FLAGS.config
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  path, arch = import_teacher(FLAGS.checkpoint, config, FLAGS.output, FLAGS.overwrite)
  print(f"Imported {FLAGS.checkpoint} as {checkpoints.describe(arch)} ({arch['num_classes']} "
        f"classes, {arch['in_channels']} channels) into {path}")
  if os.path.abspath(path) != os.path.abspath(config.teacher.checkpoint):
    print(f"Train with --config.teacher.checkpoint={path} so the config loads this teacher.")
  print("The training run logs the teacher's test accuracy first: check that it matches the "
        "accuracy you measured in PyTorch (it will not if the teacher was trained with another "
        "input normalisation than config.data.mean/std).")


if __name__ == "__main__":
  cli.run(main)
