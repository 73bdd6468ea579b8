"""The package's log lines reach the stderr of the moment as bare messages, printed once."""

from __future__ import annotations

import importlib
import logging

import dnd_jax
from dnd_jax import logs


def test_a_record_is_the_bare_message_on_the_current_stderr(capsys):
  logging.getLogger("dnd_jax.some_module").info("epoch 1/1  loss 2.0000")
  logging.getLogger("dnd_jax.other").warning("Warning: something")
  logging.getLogger("dnd_jax.other").debug("not shown at the default level")
  assert capsys.readouterr().err == "epoch 1/1  loss 2.0000\nWarning: something\n"


def test_the_handler_is_installed_once_and_does_not_propagate():
  importlib.reload(logs)
  importlib.reload(dnd_jax)
  package = logging.getLogger("dnd_jax")
  assert [h.get_name() for h in package.handlers].count(logs.HANDLER_NAME) == 1
  assert package.propagate is False
