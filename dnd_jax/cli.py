"""What every command in scripts/ does with bad input and Ctrl-C, in one place.

A user who mistypes a config file, a `--config.<field>` or a path meets the same answer from every
script: one `error:` line that says what is wrong and how to fix it, exit code 2, no traceback
(`DND_JAX_TRACEBACK=1` shows it). Ctrl-C ends with one line and exit code 130. What counts as bad
input is what the library raises for it: `ValueError` (its `ConfigError`, `DataError` and
`CheckpointError` are ValueErrors), `OSError` (a file that is missing or cannot be written) and
`FloatingPointError` (a non-finite loss).

The absl scripts run through `run(main)`, which also checks, before absl parses the flags, the two
mistakes absl reports with a traceback: a config file that does not load and an override that
names no field of the config. An argparse script wraps its `main` in `guarded` and parses with
`ArgumentParser`, whose errors are `fail`'s line too.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys
import traceback
from typing import Callable, NoReturn

from absl import app, flags
from ml_collections import config_flags

from dnd_jax import config_check
from dnd_jax.configs import load_config_file

BAD_INPUT = 2
INTERRUPTED = 130
BAD_INPUT_ERRORS = (ValueError, OSError, FloatingPointError)
TRACEBACK_HINT = "(set DND_JAX_TRACEBACK=1 for the traceback)"
INTERRUPTED_LINE = "interrupted; rerun the same command."


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
  """Ends the command with `message` as one `error:` line.

  A message the library wrote on several lines keeps them after its first, as details under the
  `error:` line (the PyTorch bridge lists each mismatched key on a line of its own).
  """
  first, *details = message.strip().split("\n")
  lines = [f"error: {' '.join(first.split())}", *(d.rstrip() for d in details)]
  if code == BAD_INPUT:
    lines.append(TRACEBACK_HINT)
  print("\n".join(lines), file=sys.stderr, flush=True)
  sys.exit(code)


def _is_closed_loop_callback(exc_type, exc, tb) -> bool:
  """An asyncio callback scheduled on an event loop that was already closed, and nothing else.

  When Orbax fails to restore (a damaged data file), it closes the event loop of that restore
  while TensorStore still completes the other reads; each completion then schedules its callback
  on the closed loop from a TensorStore thread, and Python printed a traceback for each (as an
  unraisable exception) around the command's one `error:` line. Nothing is lost by dropping them: the
  restore had already failed and been reported.
  """
  if exc_type is not RuntimeError or str(exc) != "Event loop is closed" or tb is None:
    return False
  frames = traceback.extract_tb(tb)
  return all(os.path.join("asyncio", "") in frame.filename for frame in frames)


def _unraisablehook(unraisable) -> None:
  if not _is_closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                  unraisable.exc_traceback):
    sys.__unraisablehook__(unraisable)


def guarded(main: Callable, interrupted: str = INTERRUPTED_LINE) -> Callable:
  """`main` with bad input turned into `fail` and Ctrl-C into one line and exit code 130.

  `interrupted` is the line for Ctrl-C; an interruption that knows its run folder (a training
  run's `Interrupted`: "interrupted at epoch N; rerun the same command to resume") says its own.
  """

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    sys.unraisablehook = _unraisablehook  # a command's error is its one line
    try:
      return main(*args, **kwargs)
    except KeyboardInterrupt as e:
      where = getattr(e, "workdir", None)
      print(f"\n{e} (run folder {where})" if where else f"\n{interrupted}", file=sys.stderr,
            flush=True)
      sys.exit(INTERRUPTED)
    except BAD_INPUT_ERRORS as e:
      if os.environ.get("DND_JAX_TRACEBACK"):
        raise
      fail(str(e))

  return wrapper


class ArgumentParser(argparse.ArgumentParser):
  """argparse, with a flag error as one `error:` line (exit code 2, as argparse's own)."""

  def error(self, message: str) -> NoReturn:
    fail(f"{message}. See `python {self.prog} --help` for the flags.")


def config_file_named(argv: list[str]) -> str | None:
  """The config file named on the command line (the last one, as absl takes the last)."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def default_workdir(config_flag) -> str:
  """runs/<config file name>, with the config's argument when it has one
  (`--config configs/quickstart.py:teacher` -> runs/quickstart_teacher): the argument picks
  another config, so it must not share the plain config's folder."""
  path, _, arg = config_flags.get_config_filename(config_flag).partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}_{arg}" if arg else name)


def override_names(argv: list[str]) -> list[str]:
  """The fields named by --config.<field>=value (and --noconfig.<field>) on the command line."""
  names = []
  for arg in argv:
    for prefix in ("--config.", "--noconfig."):
      if arg.startswith(prefix):
        names.append(arg[len(prefix):].split("=", 1)[0])
  return names


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after checking what it reports with a traceback: the config file and
  the names of the --config.<field> overrides. Any other flag error is one `error:` line."""
  spec = config_file_named(argv)
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
    for name in override_names(argv):
      problem = config_check.unknown_field(name, config)
      if problem:
        fail(problem)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{str(e).rstrip('.')}. See `python {argv[0]} --helpfull` for the flags.")


def run(main: Callable[[list[str]], None], interrupted: str = INTERRUPTED_LINE) -> None:
  """`absl.app.run(main)` with this module's conventions; `main` receives no positional
  arguments (any on the command line are an error)."""

  def checked_main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value "
           "(--config.a.b=value for a config field).")
    return main(argv)

  app.run(guarded(checked_main, interrupted), flags_parser=parse_flags)
