"""Evaluate an exported model on a data set's test (or validation) split.

  python scripts/evaluate.py --model runs/pdnd_cifar/model --config configs/pdnd_cifar.py
  python scripts/evaluate.py --model resnet34_cifar100.pt --config configs/pdnd_cifar.py \
      --confusion confusion.png

--model: a folder with model.json (a workdir's model/, or an imported teacher) or a PyTorch
torchvision-layout checkpoint file. --config: the config whose `data` block (data set, image
size, normalisation) the model was trained with. Prints accuracy, per-class accuracy and
inference images/s (and writes them as JSON with --output); --confusion writes the confusion
matrix as a PNG (needs matplotlib). Bad input ends with one `error:` line and exit code 2
(dnd_jax/cli.py).
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import checkpoints, cli  # noqa: E402
from dnd_jax.evaluate import evaluate_model, plot_confusion  # noqa: E402
from dnd_jax.runtime import setup_runtime  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config whose data block the model was "
                                "trained with, e.g. configs/pdnd_cifar.py.", lock_config=True)
flags.DEFINE_string("model", None, "Exported model folder (with model.json) or a PyTorch "
                    "checkpoint file.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "Which split to evaluate on.")
flags.DEFINE_string("confusion", None, "Write the confusion matrix to this PNG.")
flags.DEFINE_string("output", None, "Write the results to this JSON file.")
flags.mark_flags_as_required(["config", "model"])


def main(argv):
  for path in (FLAGS.output, FLAGS.confusion):  # made before the evaluation, not after it
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  setup_runtime()
  result = evaluate_model(FLAGS.model, FLAGS.config, FLAGS.split)
  arch = result["architecture"]
  print(f"{checkpoints.describe(arch)} on {result['dataset']} {result['split']} "
        f"({result['images']} images): accuracy {100 * result['accuracy']:.2f}%, "
        f"{result['images_per_s']:.0f} images/s on {result['device']}")
  if result["trained_on_other_inputs"]:
    print(f"Note: the model was trained on other inputs than these: "
          f"{'; '.join(result['trained_on_other_inputs'])}. Give the config (and --config.data.* "
          "overrides) of its training run to measure the accuracy that run reported.")
  for name, acc in result["per_class_accuracy"].items():
    print(f"  {name:>20}: {100 * acc:.2f}%")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=2)
  if FLAGS.confusion:
    try:
      plot_confusion(result, FLAGS.confusion)
    except ImportError:
      cli.fail("--confusion needs matplotlib (pip install matplotlib).")
    print(f"Confusion matrix: {FLAGS.confusion}")


if __name__ == "__main__":
  cli.run(main)
