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

Compile once, run many: the numbers that differ between runs (the schedule's length, hence the
phase boundaries; the learning rates; the momentum range; weight decay) are held in the optimiser
state as float32 arrays (`RuntimeSchedule`, and Optax's injected hyperparameters), not compiled
into the update. Runs that differ in epoch budget, learning rate or seed (the augmentation key is
in the train state too) therefore run the same compiled step, and a second such run finds it in
the persistent compilation cache. Only the kind of schedule and whether momentum cycles are static.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _cos_anneal(start, end, pct):
  """PyTorch's `end + (start - end) / 2 * (cos(pi * pct) + 1)`, written as cos^2(pi * pct / 2)
  so that fp32 keeps its precision as the cosine nears -1 at the end of the schedule."""
  return end + (start - end) * jnp.square(jnp.cos(jnp.pi * pct / 2.0))


def one_cycle(total_steps, max_lr, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
              base_momentum=0.85, max_momentum=0.95) -> tuple[Schedule, Schedule]:
  """(learning rate, momentum) schedules equal to torch's OneCycleLR(anneal_strategy="cos").

  Any argument may be a traced value. Python numbers give PyTorch's double-precision phase
  boundary; float32 ones may put it a rounding error away, which moves no value measurably since
  both phases meet at max_lr there.
  """
  if isinstance(total_steps, (int, float)) and total_steps < 2:
    raise ValueError(f"OneCycle needs at least 2 steps, got total_steps={total_steps}.")
  initial_lr = max_lr / div_factor
  min_lr = initial_lr / final_div_factor
  warm_end = pct_start * total_steps - 1.0
  last = total_steps - 1.0

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


def cyclic_triangular2(step_size_up, base_lr, max_lr, base_momentum=0.8, max_momentum=0.9,
                       step_size_down=None) -> tuple[Schedule, Schedule]:
  """(learning rate, momentum) schedules equal to torch's CyclicLR(mode="triangular2").

  Any argument may be a traced value.
  """
  up = step_size_up
  down = step_size_down if step_size_down is not None else up
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


def constant(lr, momentum) -> tuple[Schedule, Schedule]:
  """A fixed learning rate and momentum."""
  return (lambda step: jnp.asarray(lr, jnp.float32),
          lambda step: jnp.asarray(momentum, jnp.float32))


SCHEDULES = {"onecycle": one_cycle, "cyclic": cyclic_triangular2, "constant": constant}


def schedule_arguments(optim_config, total_steps: int, phase_steps: float) -> dict[str, float]:
  """The keyword arguments of the config's schedule (`SCHEDULES[optim_config.schedule]`).

  `phase_steps` is the length of one Progressive-DnD phase; the cyclic schedule puts one
  triangle in each phase (docs/design.md section 2), so its step_size_up is half a phase.
  """
  name = optim_config.schedule
  lr = float(optim_config.lr)
  momenta = dict(base_momentum=float(optim_config.base_momentum),
                 max_momentum=float(optim_config.max_momentum))
  if name == "onecycle":
    return dict(total_steps=float(total_steps), max_lr=optim_config.max_lr_factor * lr,
                pct_start=float(optim_config.pct_start), div_factor=float(optim_config.div_factor),
                final_div_factor=float(optim_config.final_div_factor), **momenta)
  if name == "cyclic":
    return dict(step_size_up=phase_steps / 2.0, base_lr=optim_config.base_lr_factor * lr,
                max_lr=optim_config.max_lr_factor * lr, **momenta)
  if name == "constant":
    return dict(lr=lr, momentum=float(optim_config.momentum))
  raise ValueError(f"Unknown schedule {name!r}; use 'onecycle', 'cyclic' or 'constant'.")


def make_schedules(optim_config, total_steps: int, phase_steps: float) -> tuple[Schedule, Schedule]:
  """The config's (lr, momentum) schedules as functions of the step, for use on the host (the
  compiled step reads the same values from its optimiser state)."""
  lr, momentum = SCHEDULES[optim_config.schedule](
      **schedule_arguments(optim_config, total_steps, phase_steps))
  if not optim_config.get("cycle_momentum", True):
    fixed = float(optim_config.momentum)
    momentum = lambda step: jnp.asarray(fixed, jnp.float32)  # noqa: E731
  return lr, momentum


class RuntimeScheduleState(NamedTuple):
  count: jax.Array  # updates done so far: PyTorch's scheduler.last_epoch
  arguments: dict[str, jax.Array]  # the schedule's keyword arguments, float32


class RuntimeSchedule(optax.schedules.StatefulSchedule):
  """One of a schedule's (lr, momentum) pair, with the schedule's arguments held in its state.

  For `optax.inject_hyperparams`: `init` puts `arguments` into the optimiser state, and the value
  at each update is computed from the state alone, so the compiled update is the same whatever
  the arguments are.
  """

  def __init__(self, schedule: str, which: int, arguments: dict[str, float]):
    self.schedule, self.which, self.arguments = schedule, which, arguments

  def init(self) -> RuntimeScheduleState:
    return RuntimeScheduleState(
        count=jnp.zeros([], jnp.int32),
        arguments={k: jnp.asarray(v, jnp.float32) for k, v in self.arguments.items()})

  def update(self, state: RuntimeScheduleState, **extra_args) -> RuntimeScheduleState:
    return state._replace(count=optax.safe_increment(state.count))

  def __call__(self, state: RuntimeScheduleState, **extra_args) -> jax.Array:
    return SCHEDULES[self.schedule](**state.arguments)[self.which](state.count)


def make_optimizer(optim_config, total_steps: int, phase_steps: float) -> optax.GradientTransformation:
  """The config's SGD and schedules, with every number of them in the optimiser state."""
  arguments = schedule_arguments(optim_config, total_steps, phase_steps)
  name = optim_config.schedule
  momentum = RuntimeSchedule(name, 1, arguments)
  if not optim_config.get("cycle_momentum", True):
    momentum = float(optim_config.momentum)  # an injected hyperparameter: also in the state
  return torch_sgd(learning_rate=RuntimeSchedule(name, 0, arguments), momentum=momentum,
                   weight_decay=float(optim_config.weight_decay))


def with_config_hyperparameters(restored: Any, fresh: Any) -> Any:
  """A restored optimiser state with the schedule arguments and hyperparameters of `fresh`.

  `fresh` is `tx.init(...)` for the current config. A resumed run may change the budget or the
  learning rate (that is how a run is extended); its schedule then continues from the restored
  step count under the new arguments, as when the schedule was compiled in. Counts and momentum
  buffers stay as restored.
  """
  def is_node(x):
    return isinstance(x, (RuntimeScheduleState, optax.InjectStatefulHyperparamsState))

  def pick(old, new):
    if isinstance(old, RuntimeScheduleState):
      return old._replace(arguments=new.arguments)
    if isinstance(old, optax.InjectStatefulHyperparamsState):
      numeric = {k: new.hyperparams[k] for k in old.hyperparams if k not in old.hyperparams_states}
      return old._replace(
          hyperparams={**old.hyperparams, **numeric},
          hyperparams_states=with_config_hyperparameters(old.hyperparams_states,
                                                         new.hyperparams_states),
          inner_state=with_config_hyperparameters(old.inner_state, new.inner_state))
    return old

  return jax.tree.map(pick, restored, fresh, is_leaf=is_node)
