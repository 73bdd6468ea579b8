"""Where the package's progress and warning lines go: stderr, as the bare message, one per line.

Each module logs through `logging.getLogger(__name__)`, and this module gives the `dnd_jax` logger
one handler, installed when the package is imported, so the command-line scripts and library users
see the same plain lines ("Resuming ... from epoch 3", "epoch 1/10  loss ...") without level or
logger prefixes. The handler looks up `sys.stderr` for each record rather than once at import, so a
replaced stderr (pytest's capsys, a redirecting caller) receives the lines.

The `dnd_jax` logger does not propagate: absl puts its own handler on the root logger when a script
runs through `absl.app`, and a propagating record would be printed a second time with absl's prefix.
Library users adjust this with the standard logging API, for instance
`logging.getLogger("dnd_jax").setLevel(logging.WARNING)` to keep only warnings, or, to route the
records through their own configuration instead, `logging.getLogger("dnd_jax").removeHandler(
logs.HANDLER)` and `logging.getLogger("dnd_jax").propagate = True`.
"""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = "dnd_jax"
HANDLER_NAME = "dnd_jax.stderr"


class StderrHandler(logging.Handler):
  """Writes each record's message to the `sys.stderr` of the moment, flushed at once (progress lines
  interleave with the progress bar, and a killed run keeps what it said)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      stream = sys.stderr
      stream.write(self.format(record) + "\n")
      stream.flush()
    except Exception:  # noqa: BLE001 - logging's contract: a failing handler must not raise
      self.handleError(record)


def install() -> StderrHandler:
  """Gives the `dnd_jax` logger its stderr handler once (a reload of the package adds no second)."""
  logger = logging.getLogger(PACKAGE_LOGGER)
  for handler in logger.handlers:
    if handler.get_name() == HANDLER_NAME:
      return handler
  handler = StderrHandler()
  handler.set_name(HANDLER_NAME)
  handler.setFormatter(logging.Formatter("%(message)s"))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  return handler


HANDLER = install()
