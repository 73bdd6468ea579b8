"""The Optax schedules and SGD equal PyTorch's, value for value and step for step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from dnd_jax.configs import base_config  # noqa: E402
from dnd_jax.optim import (cyclic_triangular2, make_optimizer, one_cycle,  # noqa: E402
                           with_config_hyperparameters)


def _torch_trace(make_scheduler, steps):
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=5e-4)
  sched = make_scheduler(opt)
  lrs, moms = [], []
  for _ in range(steps):
    lrs.append(opt.param_groups[0]["lr"])
    moms.append(opt.param_groups[0]["momentum"])
    opt.step()
    sched.step()
  return np.array(lrs), np.array(moms)


def _schedule_values(make, args, total, traced):
  """Every step's (lr, momentum) of `make(*args)`; with `traced`, the arguments are jit inputs,
  as they are in the training step (held in the optimiser state)."""
  def values(*args):
    lr, mom = make(*args)
    steps = jnp.arange(total)
    return jax.vmap(lr)(steps), jax.vmap(mom)(steps)

  return jax.jit(values)(*[jnp.float32(a) for a in args]) if traced else values(*args)


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("total", [10, 97, 391])
def test_one_cycle_matches_torch(total, traced):
  lrs, moms = _torch_trace(
      lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=total), total)
  lr, mom = _schedule_values(one_cycle, (total, 0.5), total, traced)
  np.testing.assert_allclose(lr, lrs, rtol=1e-5, atol=1e-7)  # fp32 resolution at max_lr 0.5
  np.testing.assert_allclose(mom, moms, rtol=1e-6)


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("total", [30, 97, 600])
def test_cyclic_triangular2_one_triangle_per_phase_matches_torch(total, traced):
  lr_base = 0.05
  up = total / 6
  lrs, moms = _torch_trace(lambda o: torch.optim.lr_scheduler.CyclicLR(
      o, base_lr=3e-3 * lr_base, max_lr=10 * lr_base, step_size_up=up, mode="triangular2"), total)
  lr, mom = _schedule_values(cyclic_triangular2, (up, 3e-3 * lr_base, 10 * lr_base), total, traced)
  np.testing.assert_allclose(lr, lrs, rtol=1e-5, atol=1e-7)  # fp32 resolution at max_lr 0.5
  np.testing.assert_allclose(mom, moms, rtol=1e-6)
  # each phase opens with a warm-up and its peak is half the last one
  peaks = [lrs[int(i * total / 3):int((i + 1) * total / 3)].max() for i in range(3)]
  assert peaks[1] == pytest.approx(peaks[0] / 2, rel=0.1)
  assert peaks[2] == pytest.approx(peaks[1] / 2, rel=0.1)


def test_sgd_updates_match_torch_with_weight_decay_and_cycled_momentum():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(6)]
  total = 6
  p = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
  for g in grads:
    p.grad = torch.tensor(g)
    opt.step()
    sched.step()
  config = base_config("cifar100", "kd").optim
  tx = make_optimizer(config, total_steps=total, phase_steps=total)
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["w"], p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_constant_momentum_when_cycling_is_off_and_unknown_schedule_errors():
  config = base_config("cifar100", "kd").optim
  config.cycle_momentum = False
  tx = make_optimizer(config, total_steps=10, phase_steps=10)
  state = tx.init({"w": jnp.zeros(2)})
  assert float(state.hyperparams["momentum"]) == pytest.approx(0.9)
  config.schedule = "linear"
  with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
    make_optimizer(config, 10, 10)


@pytest.mark.parametrize("schedule", ["onecycle", "cyclic", "constant"])
def test_budget_and_learning_rate_are_state_so_the_update_compiles_once(schedule):
  params = {"w": jnp.ones((3, 2))}

  def update_program(total_steps, lr, cycle_momentum=True):
    config = base_config("cifar100", "pdnd").optim
    config.schedule, config.lr, config.cycle_momentum = schedule, lr, cycle_momentum
    tx = make_optimizer(config, total_steps, total_steps / 3)
    state = tx.init(params)
    # two updates: the values differ, as the budget and learning rate do
    first = float(tx.update(params, state, params)[1].hyperparams["learning_rate"])
    return jax.jit(tx.update).lower(params, state, params).as_text(), first

  short, lr_short = update_program(30, 0.05)
  long, lr_long = update_program(6000, 0.2)
  assert lr_short != lr_long
  assert short == long
  # what stays static changes the program
  if schedule != "constant":
    assert update_program(30, 0.05, cycle_momentum=False)[0] != short


def test_a_resumed_state_takes_the_new_budget_and_keeps_its_count_and_momentum():
  config = base_config("cifar100", "kd").optim
  params = {"w": jnp.ones(2)}
  old_tx, new_tx = make_optimizer(config, 100, 100), make_optimizer(config, 400, 400)
  state = old_tx.init(params)
  for _ in range(3):
    _, state = old_tx.update(params, state, params)
  renewed = with_config_hyperparameters(state, new_tx.init(params))
  lr_sched = renewed.hyperparams_states["learning_rate"]
  assert int(lr_sched.count) == 3 and int(renewed.count) == 3
  assert float(lr_sched.arguments["total_steps"]) == 400.0
  np.testing.assert_array_equal(renewed.inner_state[1].trace["w"], state.inner_state[1].trace["w"])
  # the next update uses the new schedule at step 3
  expected = one_cycle(400, max_lr=10 * config.lr)[0](3)
  _, after = new_tx.update(params, renewed, params)
  assert float(after.hyperparams["learning_rate"]) == pytest.approx(float(expected), rel=1e-6)
