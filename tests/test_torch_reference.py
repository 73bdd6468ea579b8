"""The PyTorch reference steps compute what dnd_jax computes: same loss, same updated parameters.

dnd_jax.bench times dnd_jax against dnd_jax/torch_reference.py; that comparison means
something only if both run the same step. Here both get the same weights (through the converter)
and the same normalised batches; PyTorch takes three SGD steps and dnd_jax takes each of them
from PyTorch's state before it (the later ones exercise the momentum buffer and the schedule's
next values); losses, parameters and every BatchNorm statistic (running mean, unbiased running
variance, batch counter) must agree. The dnd_jax side calls `steps.group_losses` directly, as the
jitted training step does after augmenting.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnd_jax import torch_reference as tr  # noqa: E402
from dnd_jax import optim, steps  # noqa: E402
from dnd_jax.configs import base_config  # noqa: E402
from dnd_jax.methods import get_method  # noqa: E402
from dnd_jax.models import ResNet  # noqa: E402
from dnd_jax.torch_bridge import torch_state_dict_to_variables  # noqa: E402

WIDTH, SIDE, BATCH, CLASSES, TOTAL_STEPS, TEACHER_DEPTH = 4, 16, 8, 10, 12, 34
N_STEPS = 3


def randomise_batchnorm(model, seed):
  """Non-trivial BatchNorm parameters and running statistics (the teacher's features use them)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
  return model


def momentum_buffers(model, optimizer) -> dict:
  """The optimiser's momentum buffers as a state dict of `model` (zeros before the first step),
  so that the converter maps them onto the parameter tree as it maps the parameters."""
  state = {k: v.detach().clone() for k, v in model.state_dict().items()}
  for name, p in model.named_parameters():
    buf = optimizer.state.get(p, {}).get("momentum_buffer")
    state[name] = torch.zeros_like(p) if buf is None else buf.detach().clone()
  return state


def run_both(method_name, phase, *, n_steps=2):
  """Each of `n_steps` steps of the PyTorch reference, and dnd_jax's step from the same state.

  PyTorch runs its steps in sequence; before step k, dnd_jax is given PyTorch's state (weights,
  BatchNorm statistics, momentum buffers; its own step count, so the schedules advance as in a
  run) and takes one step. Every comparison is of one step from the same state: these tiny
  networks diverge within a few steps at the paper's learning rates (DnD's loss 723 -> 967 in
  three), and along such a trajectory a rounding difference grows until it is no longer one.
  Returns, per step k: (torch loss, jax loss, state before, torch state after, jax state after).
  """
  config = base_config("cifar100", method_name)
  torch.manual_seed(0)
  student = tr.build_resnet(18, CLASSES, width=WIDTH, stem="cifar", in_channels=3)
  teacher = randomise_batchnorm(tr.build_resnet(TEACHER_DEPTH, CLASSES, width=WIDTH, stem="cifar"), 1)
  teacher_vars = torch_state_dict_to_variables(teacher.state_dict())
  g = torch.Generator().manual_seed(2)
  batches = [(torch.randn(BATCH, 3, SIDE, SIDE, generator=g),
              torch.randint(0, CLASSES, (BATCH,), generator=g)) for _ in range(n_steps)]

  method = get_method(method_name)
  phase_steps = TOTAL_STEPS / len(method.phases)
  torch_step = tr.make_torch_step(method_name, student, teacher, BATCH, total_steps=TOTAL_STEPS,
                                  phase=phase, optim=tr.optim_kwargs(config.optim),
                                  method_config=config.method)
  assert not torch_step.channels_last  # the CPU computes in the contiguous layout
  before, torch_losses = [], []
  for x, y in batches:
    before.append((torch_state_dict_to_variables(student.state_dict()),
                   torch_state_dict_to_variables(momentum_buffers(student, torch_step.optimizer))))
    torch_losses.append(float(torch_step(x, y)))
  after = [variables for variables, _ in before[1:]]
  after.append(torch_state_dict_to_variables(student.state_dict()))

  model = ResNet(depth=18, num_classes=CLASSES, width=WIDTH, stem="cifar")
  teacher_model = ResNet(depth=TEACHER_DEPTH, num_classes=CLASSES, width=WIDTH, stem="cifar")
  tx = optim.make_optimizer(config.optim, TOTAL_STEPS, phase_steps)
  state = steps.create_train_state(before[0][0], tx)
  loss_and_grad = jax.value_and_grad(steps.group_losses, has_aux=True)
  results = []
  for (x, y), (variables, buffers), torch_loss, torch_after in zip(batches, before, torch_losses,
                                                                    after):
    state = state.replace(
        params=jax.tree.map(jnp.asarray, variables["params"]),
        batch_stats=jax.tree.map(jnp.asarray, variables["batch_stats"]),
        opt_state=optax.tree_utils.tree_set(
            state.opt_state, trace=jax.tree.map(jnp.asarray, buffers["params"])))
    images, labels = jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), jnp.asarray(y.numpy())
    teacher_feats = teacher_model.apply(teacher_vars, images, method="stages")
    (loss, (new_stats, _)), grads = loss_and_grad(
        state.params, state.batch_stats, model=model, groups=method.partition(phase),
        method=method, method_config=config.method, images=images, labels=labels,
        teacher_feats=teacher_feats,
        teacher_logits_fn=functools.partial(teacher_model.apply, teacher_vars))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=new_stats, opt_state=opt_state)
    results.append((torch_loss, float(loss), variables, torch_after,
                    jax.device_get(state.variables)))
  return results


@pytest.mark.parametrize("method_name,phase", [("dnd", 0), ("pdnd", 1), ("kd", 0)])
def test_steps_match_pytorch(method_name, phase):
  results = run_both(method_name, phase, n_steps=N_STEPS)
  torch_losses = [r[0] for r in results]
  np.testing.assert_allclose([r[1] for r in results], torch_losses, rtol=2e-5)
  assert torch_losses[0] != torch_losses[1]  # the first step changed the student
  for step, (_, _, initial, torch_final, jax_final) in enumerate(results):
    check_one_step(initial, torch_final, jax_final, f"step {step}")


def check_one_step(initial, torch_final, jax_final, where):
  """dnd_jax's state after one step equals PyTorch's: parameters and every BatchNorm statistic."""
  stats_initial = dict(jax.tree_util.tree_leaves_with_path(initial["batch_stats"]))
  # Each leaf's update is compared against its own size (down to a thousandth of the largest),
  # allowing a few float32 ulps of the parameter itself.
  deltas = jax.tree.map(lambda a, b: np.abs(a - b).max(), torch_final["params"], initial["params"])
  largest = max(jax.tree.leaves(deltas))
  assert largest > 1e-3, where  # the step moved the parameters, so the comparison says something

  def excess(j, t, d):
    allowed = 3e-5 * max(d, 1e-3 * largest) + 5e-7 * np.abs(t).max()
    return float(np.abs(j - t).max()) / allowed

  errors = jax.tree.map(excess, jax_final["params"], torch_final["params"], deltas)
  assert max(jax.tree.leaves(errors)) <= 1.0, (where, errors)

  # BatchNorm running means, running variances (PyTorch's, updated with the unbiased batch
  # variance) and batch counters, every one of them.
  stats_t = dict(jax.tree_util.tree_leaves_with_path(torch_final["batch_stats"]))
  stats_j = dict(jax.tree_util.tree_leaves_with_path(jax_final["batch_stats"]))
  assert stats_j.keys() == stats_t.keys()
  for path, value in stats_t.items():
    if path[-1].key == "num_batches_tracked":
      assert int(stats_j[path]) == int(value) == int(stats_initial[path]) + 1, (where, path)
    else:
      assert np.abs(value - stats_initial[path]).max() > 0, (where, path)  # the step moved it
      np.testing.assert_allclose(stats_j[path], value, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{where} {path}")


def test_reference_pdnd_switches_partition_where_dnd_jax_does():
  """With phase=None the reference follows the step count through the method's phases."""
  torch.manual_seed(0)
  student, teacher = tr.build_models(18, 34, CLASSES, width=WIDTH)
  step = tr.make_torch_step("pdnd", student, teacher, BATCH, total_steps=9)
  method = get_method("pdnd")
  assert [step.partition(s) for s in range(9)] == [
      method.partition(method.phase_at(s, 9)) for s in range(9)]
  with pytest.raises(ValueError, match="batches of 8"):
    step(torch.zeros(4, 3, SIDE, SIDE), torch.zeros(4, dtype=torch.long))


def _two_dnd_steps(device, **options):
  g = torch.Generator().manual_seed(5)
  x, y = torch.randn(BATCH, 3, SIDE, SIDE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)
  student, teacher = tr.build_models(18, 34, CLASSES, width=WIDTH, device=device)
  step = tr.make_torch_step("dnd", student, teacher, BATCH, total_steps=4, **options)
  return step, [float(step(x.to(device), y.to(device))) for _ in range(2)]


def test_bf16_autocast_computes_the_same_step_and_the_cpu_the_contiguous_layout():
  """bf16 autocast changes the precision, not the computation; on the CPU the reference computes
  in the contiguous layout (channels-last is a GPU speed option: see TorchStep)."""
  step, fp32 = _two_dnd_steps("cpu")
  assert not step.channels_last
  assert _two_dnd_steps("cpu")[1] == fp32  # the same seed gives the same step, bit for bit
  _, bf16 = _two_dnd_steps("cpu", bf16=True)
  np.testing.assert_allclose(bf16, fp32, rtol=3e-2)
  assert bf16 != fp32  # autocast did run in bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="channels-last is a GPU option")
def test_channels_last_computes_the_same_step_on_the_gpu(monkeypatch):
  monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # both layouts in float32
  step, nhwc = _two_dnd_steps("cuda")
  assert step.channels_last  # the default on a GPU
  _, nchw = _two_dnd_steps("cuda", channels_last=False)
  np.testing.assert_allclose(nhwc, nchw, rtol=1e-5)
