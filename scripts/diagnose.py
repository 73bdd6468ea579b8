"""Diagnose a trained DnD student: hybrid accuracies, per-stage feature errors, BatchNorm re-estimation.

  python scripts/diagnose.py --config configs/dnd_fashion.py [--config.x=...] [--workdir runs/dnd_fashion]
                             [--student <model folder>] [--output <prefix>] [--bn_batches N]

Give the run's config with the run's overrides (it names the data, the student's and teacher's
architecture, and the teacher, `config.teacher.checkpoint`). The student is <workdir>/model unless
--student names another model folder. Writes <prefix>.json and <prefix>.md (default
<workdir>/diagnosis, or beside the model folder that --student names when no --workdir is given)
and prints the tables; dnd_jax/diagnose.py says what each number is.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import cli, diagnose, workdir as run_folder  # noqa: E402
from dnd_jax.runtime import setup_runtime  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's config file, e.g. configs/dnd_fashion.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The student's run folder; default runs/<config name>.")
flags.DEFINE_string("student", None, "The student's model folder; default <workdir>/model.")
flags.DEFINE_string("output", None, "Prefix of the .json and .md written; default "
                    "<workdir>/diagnosis, or <the --student folder's parent>/diagnosis without "
                    "--workdir.")
flags.DEFINE_integer("bn_batches", 0, "Training batches that re-estimate the BatchNorm statistics "
                     "(0: one epoch's full batches).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the re-estimation batches and their augmentation.")
flags.mark_flags_as_required(["config"])


def main(argv):
  workdir = FLAGS.workdir or cli.default_workdir(FLAGS["config"])
  setup_runtime()
  result = diagnose.diagnose(FLAGS.config, FLAGS.student or run_folder.model_dir(workdir),
                             bn_batches=FLAGS.bn_batches, seed=FLAGS.seed)
  # a --student of another run is reported beside it, never over <workdir>'s own diagnosis
  beside = (os.path.dirname(os.path.abspath(FLAGS.student)) if FLAGS.student and not FLAGS.workdir
            else workdir)
  paths = diagnose.write_report(result, FLAGS.output or run_folder.diagnosis_path(beside))
  print(diagnose.format_markdown(result))
  print(f"Wrote {paths[0]} and {paths[1]}.")


if __name__ == "__main__":
  cli.run(main)
