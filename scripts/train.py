"""Train a network with any method of dnd_jax: `python scripts/train.py --config configs/X.py`.

Flags: --config (an ml_collections config file; override any field with --config.a.b=value) and
--workdir (default runs/<config file name>). Running the same command again resumes the run; on a
finished run it prints the run's summary. A distillation run whose teacher is missing trains it
first (its own step, in its own workdir, on the student's data settings; see dnd_jax.teacher).

Bad input (a missing config file, an unknown field, an invalid value, a workdir in use or not
writable, a missing or corrupt data file, a missing or mismatched teacher) ends, before anything
is written where possible, with one `error:` line that says what is wrong and how to fix it, and
exit code 2. Ctrl-C ends with "interrupted at epoch N; rerun the same command to resume" and exit
code 130.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import cli, config_check  # noqa: E402
from dnd_jax.runtime import setup_runtime  # noqa: E402
from dnd_jax.train import train_command  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pdnd_cifar.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics, summary); default "
                    "runs/<config name>. The same workdir resumes.")
flags.mark_flags_as_required(["config"])


def main(argv):
  workdir = FLAGS.workdir or cli.default_workdir(FLAGS["config"])
  config = FLAGS.config
  config_check.check(config, workdir)  # before JAX starts; train_command checks the rest
  setup_runtime()
  train_command(config, workdir, overrides=cli.override_names(sys.argv))


if __name__ == "__main__":
  cli.run(main, interrupted="interrupted before training started; nothing to resume: rerun "
          "the same command.")
