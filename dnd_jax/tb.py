"""TensorBoard event files in the workdir, written with tensorboardX (no TensorFlow needed).

The trainer logs, every `config.log.refresh_steps` steps, the running means of the epoch's loss
terms (read from the on-device metric sums at the moment the progress bar reads them too, so
logging adds no host sync of its own), the learning rate and the throughput; and after each epoch
the evaluation accuracy and loss. Events go to `<workdir>/tensorboard`, so `tensorboard --logdir
runs/` shows every run under runs/ side by side. A resumed run starts its writer with
`purge_step` at the resumed step: TensorBoard drops the events a killed run wrote after its last
checkpoint, and the curves continue without duplicated steps.

Where tensorboardX is not installed the trainer runs without event files, after one warning line.
Only process 0 of a multi-process run writes.
"""

from __future__ import annotations

import logging
import sys

from dnd_jax import workdir as run_folder
from dnd_jax.runtime import is_primary

log = logging.getLogger(__name__)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  Where torch is installed, tensorboardX imports it at module level only to accept torch tensors
  as well as numpy arrays: seconds of every run's startup (a tiny run's on this project's 2-core
  CPU: 7.5-7.8 s with the import, 4.9-5.6 s without, three runs each), for nothing this trainer
  logs, and training would import torch after all. A `None` in `sys.modules` makes that
  `import torch` raise ImportError for the length of the import (tensorboardX then keeps to
  numpy); a process that has imported torch keeps it.
  """
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if blocked and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


class Writer:
  """Scalars of one run; every method is a no-op when logging is off or unavailable."""

  def __init__(self, workdir: str, log_config, start_step: int):
    self._writer = None
    if not log_config.get("tensorboard", True) or not is_primary():
      return
    try:
      SummaryWriter = _summary_writer_class()  # noqa: N806
    except ImportError:
      log.warning("Warning: tensorboardX is not installed, so no TensorBoard event files are "
                  "written (pip install tensorboardX).")
      return
    self._writer = SummaryWriter(run_folder.tensorboard_dir(workdir),
                                 purge_step=start_step if start_step > 0 else None)

  @property
  def enabled(self) -> bool:
    return self._writer is not None

  def steps(self, step: int, means: dict, lr: float, images_per_s: float) -> None:
    """Running means of the current epoch's training metrics at global step `step`."""
    if self._writer is None:
      return
    for k, v in means.items():
      self._writer.add_scalar(f"train/{k}", v, step)
    self._writer.add_scalar("train/lr", lr, step)
    self._writer.add_scalar("train/images_per_s", images_per_s, step)

  def epoch(self, step: int, row: dict) -> None:
    """One row of metrics.jsonl: the epoch's evaluation and training means, at its last step."""
    if self._writer is None:
      return
    for k, v in row.items():
      if k in ("epoch", "step") or not isinstance(v, (int, float)):
        continue
      tag = f"epoch/{k[len('train_'):]}" if k.startswith("train_") else f"epoch/{k}"
      self._writer.add_scalar(tag, v, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
