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

import difflib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import config_check, runtime, teacher  # noqa: E402
from dnd_jax.configs import load_config_file  # noqa: E402
from dnd_jax.runtime import setup_runtime  # noqa: E402
from dnd_jax.train import Interrupted, train_and_evaluate  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pdnd_cifar.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics, summary); default "
                    "runs/<config name>. The same workdir resumes.")
flags.mark_flags_as_required(["config"])

BAD_INPUT = 2
INTERRUPTED = 130


def fail(message: str, code: int = BAD_INPUT) -> None:
  tail = "" if code != BAD_INPUT else "\n(set DND_JAX_TRACEBACK=1 for the traceback)"
  one_line = " ".join(message.split())
  print(f"error: {one_line}{tail}", file=sys.stderr, flush=True)
  sys.exit(code)


def _config_spec(argv: list[str]) -> str | None:
  """The config file named on the command line (the last one, as absl takes the last)."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _override_names(argv: list[str]) -> list[str]:
  names = []
  for arg in argv:
    for prefix in ("--config.", "--noconfig."):
      if arg.startswith(prefix):
        names.append(arg[len(prefix):].split("=", 1)[0])
  return names


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after checking what it reports with a traceback: the config file and
  the names of the --config.<field> overrides."""
  spec = _config_spec(argv)
  if spec is not None:
    path = spec.split(":", 1)[0]
    try:
      config = load_config_file(spec)
    except FileNotFoundError:
      here = os.path.dirname(path) or "."
      known = [os.path.join(here, n) for n in os.listdir(here)] if os.path.isdir(here) else []
      near = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
      fail(f"config file {path!r} not found." + (f" Did you mean {near[0]!r}?" if near else
                                                  " Give a file such as configs/pdnd_cifar.py."))
    except Exception as e:  # noqa: BLE001 (a user's config file can raise anything)
      if os.environ.get("DND_JAX_TRACEBACK"):
        raise
      fail(f"config file {spec!r} could not be loaded ({type(e).__name__}: {e}). Fix that file.")
    for name in _override_names(argv):
      problem = config_check.unknown_field(name, config)
      if problem:
        fail(problem)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}. See `python scripts/train.py --helpfull` for the flags.")


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; flags take the form --config.a.b=value.")
  config_path = config_flags.get_config_filename(FLAGS["config"])
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  workdir = FLAGS.workdir or os.path.join("runs", name)
  config = FLAGS.config
  try:
    config_check.check(config, workdir)
    setup_runtime()
    # before a teacher is trained for this run (train_and_evaluate checks them again)
    runtime.check_compiler_options(config.get("compiler_options"))
    teacher.provision(config, overrides=_override_names(sys.argv))
    train_and_evaluate(config, workdir)
  except Interrupted as e:
    print(f"\n{e} (run folder {e.workdir})", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)
  except KeyboardInterrupt:
    print("\ninterrupted before training started; nothing to resume: rerun the same command.",
          file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)
  except (ValueError, FloatingPointError, OSError) as e:  # bad input: config, data, checkpoints
    if os.environ.get("DND_JAX_TRACEBACK"):
      raise
    fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
