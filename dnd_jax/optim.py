"""The paper's optimiser and schedules (Table 5), built from Optax to match PyTorch step for step.

The paper ran PyTorch's SGD with `OneCycleLR` or `CyclicLR` and otherwise PyTorch's defaults; both
schedulers also cycle the momentum by default. Users compare our numbers with the paper's, so
every value here equals PyTorch's at every step (tests check against torch itself):

* SGD: weight decay is added to the gradient before the momentum buffer, which is PyTorch's
  `SGD(weight_decay=...)`, not AdamW-style decoupled decay; dampening 0, no Nesterov.
* OneCycleLR (two phases, cosine): lr from max_lr/div_factor up to max_lr over
  `pct_start * total_steps - 1` steps, then down to max_lr/div_factor/final_div_factor at step
  `total_steps - 1`; momentum moves the opposite way between max_momentum and base_momentum.
* CyclicLR, mode "triangular2": triangles between base_lr and max_lr whose height halves every
  cycle; momentum between max_momentum and base_momentum, opposite to the lr.

Optax step `i` (the i-th update, counting from 0) uses PyTorch's `scheduler.last_epoch == i`.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _cos_anneal(start, end, pct):
  """PyTorch's `end + (start - end) / 2 * (cos(pi * pct) + 1)`, written as cos^2(pi * pct / 2)
  so that fp32 keeps its precision as the cosine nears -1 at the end of the schedule."""
  return end + (start - end) * jnp.square(jnp.cos(jnp.pi * pct / 2.0))


def one_cycle(total_steps: int, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, base_momentum: float = 0.85,
              max_momentum: float = 0.95) -> tuple[Schedule, Schedule]:
  """(learning rate, momentum) schedules equal to torch's OneCycleLR(anneal_strategy="cos")."""
  if total_steps < 2:
    raise ValueError(f"OneCycle needs at least 2 steps, got total_steps={total_steps}.")
  initial_lr = max_lr / div_factor
  min_lr = initial_lr / final_div_factor
  warm_end = float(pct_start * total_steps) - 1.0
  last = float(total_steps - 1)

  def phase_pct(step):
    step = jnp.asarray(step, jnp.float32)
    in_warmup = step <= warm_end
    pct_up = step / warm_end
    pct_down = (step - warm_end) / (last - warm_end)
    return in_warmup, pct_up, pct_down

  def lr(step):
    in_warmup, up, down = phase_pct(step)
    return jnp.where(in_warmup, _cos_anneal(initial_lr, max_lr, up), _cos_anneal(max_lr, min_lr, down))

  def momentum(step):
    in_warmup, up, down = phase_pct(step)
    return jnp.where(in_warmup, _cos_anneal(max_momentum, base_momentum, up),
                     _cos_anneal(base_momentum, max_momentum, down))

  return lr, momentum


def cyclic_triangular2(step_size_up: float, base_lr: float, max_lr: float,
                       base_momentum: float = 0.8, max_momentum: float = 0.9,
                       step_size_down: float | None = None) -> tuple[Schedule, Schedule]:
  """(learning rate, momentum) schedules equal to torch's CyclicLR(mode="triangular2")."""
  up = float(step_size_up)
  down = float(step_size_down) if step_size_down is not None else up
  total = up + down
  step_ratio = up / total

  def scale(step):
    step = jnp.asarray(step, jnp.float32)
    cycle = jnp.floor(1.0 + step / total)
    x = 1.0 + step / total - cycle
    factor = jnp.where(x <= step_ratio, x / step_ratio, (x - 1.0) / (step_ratio - 1.0))
    return factor, 1.0 / (2.0 ** (cycle - 1.0))

  def lr(step):
    factor, height = scale(step)
    return base_lr + (max_lr - base_lr) * factor * height

  def momentum(step):
    factor, height = scale(step)
    return max_momentum - (max_momentum - base_momentum) * factor * height

  return lr, momentum


@optax.inject_hyperparams
def torch_sgd(learning_rate, momentum, weight_decay: float) -> optax.GradientTransformation:
  """PyTorch's SGD: g + wd * p, then the momentum buffer, then -lr; hyperparameters may vary."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum),
                     optax.scale_by_learning_rate(learning_rate))


def make_schedules(optim_config, total_steps: int, phase_steps: int) -> tuple[Schedule, Schedule]:
  """The config's (lr, momentum) schedules.

  `phase_steps` is the length of one Progressive-DnD phase; the cyclic schedule puts one
  triangle in each phase (docs/design.md section 2), so its step_size_up is half a phase.
  """
  name = optim_config.schedule
  lr = float(optim_config.lr)
  if name == "onecycle":
    return one_cycle(total_steps, max_lr=optim_config.max_lr_factor * lr,
                     pct_start=optim_config.pct_start, div_factor=optim_config.div_factor,
                     final_div_factor=optim_config.final_div_factor,
                     base_momentum=optim_config.base_momentum,
                     max_momentum=optim_config.max_momentum)
  if name == "cyclic":
    return cyclic_triangular2(phase_steps / 2.0, base_lr=optim_config.base_lr_factor * lr,
                              max_lr=optim_config.max_lr_factor * lr,
                              base_momentum=optim_config.base_momentum,
                              max_momentum=optim_config.max_momentum)
  if name == "constant":
    return (lambda step: jnp.full((), lr, jnp.float32),
            lambda step: jnp.full((), optim_config.momentum, jnp.float32))
  raise ValueError(f"Unknown schedule {name!r}; use 'onecycle', 'cyclic' or 'constant'.")


def make_optimizer(optim_config, total_steps: int, phase_steps: int) -> optax.GradientTransformation:
  lr, momentum = make_schedules(optim_config, total_steps, phase_steps)
  if not optim_config.get("cycle_momentum", True):
    fixed = float(optim_config.momentum)
    momentum = lambda step: jnp.full((), fixed, jnp.float32)  # noqa: E731
  return torch_sgd(learning_rate=lr, momentum=momentum, weight_decay=optim_config.weight_decay)

