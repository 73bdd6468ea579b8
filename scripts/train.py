"""Train a network with any method of dnd_jax: `python scripts/train.py --config configs/X.py`.

Flags: --config (an ml_collections config file; override any field with --config.a.b=value) and
--workdir (default runs/<config file name>). Running the same command again resumes the run.
Bad input (a missing or corrupt data file, a missing or mismatched teacher, an invalid config
value) ends with one `error:` line that says what is wrong and how to fix it.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax.train import train_and_evaluate  # noqa: E402
from dnd_jax.runtime import setup_runtime  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pdnd_cifar.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics, summary); default "
                    "runs/<config name>. The same workdir resumes.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_path = config_flags.get_config_filename(FLAGS["config"])
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  workdir = FLAGS.workdir or os.path.join("runs", name)
  setup_runtime()
  try:
    train_and_evaluate(FLAGS.config, workdir)
  except (ValueError, FloatingPointError) as e:  # bad input: data, checkpoints, config values
    if os.environ.get("DND_JAX_TRACEBACK"):
      raise
    print(f"error: {e}\n(set DND_JAX_TRACEBACK=1 for the traceback)", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
