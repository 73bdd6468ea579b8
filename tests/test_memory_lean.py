"""Memory-lean DnD (`config.method.memory_lean`): the same update as the default step, group by group.

The lean step differentiates the groups one after another from a teacher run one stage at a time;
it must give the default step's parameters, BatchNorm statistics, optimiser state and metrics,
and its compiled peak memory (XLA's memory analysis, which works on CPU) must not exceed the
default step's. The teacher is a ResNet18 here only to keep compilation short.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax import steps
from dnd_jax.configs import base_config
from dnd_jax.methods import get_method
from dnd_jax.models import ResNet, init_variables
from dnd_jax.optim import make_optimizer

DND_GROUPS = get_method("dnd").partition(0)  # {1}..{5}: the paper's ResNets

IMAGE = (8, 8, 3)
BATCH = 8


@pytest.fixture(scope="module")
def setup():
  student = teacher = ResNet(depth=18, num_classes=10, width=4)
  init = jax.jit(lambda key: init_variables(student, key, IMAGE))
  s_vars, t_vars = init(jax.random.key(0)), init(jax.random.key(1))
  images = jax.random.randint(jax.random.key(2), (2 * BATCH, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(2 * BATCH, dtype=jnp.int32) % 10
  perm = jax.random.permutation(jax.random.key(3), 2 * BATCH).astype(jnp.int32)
  return student, teacher, s_vars, t_vars, images, labels, perm


def _compiled_step(setup, groups, lean):
  student, teacher, s_vars, t_vars, images, labels, perm = setup
  config = base_config("cifar100", "pdnd")
  config.method.memory_lean = lean
  tx = make_optimizer(config.optim, total_steps=6, phase_steps=2)
  fn = steps.make_train_step(
      model=student, teacher=teacher, method=get_method("pdnd"), groups=groups,
      method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,) * 3,
      std=(0.25,) * 3, batch_size=BATCH, steps_per_epoch=2)
  state = steps.create_train_state(s_vars, tx)
  compiled = jax.jit(fn).lower(state, images, labels, perm, t_vars).compile()
  return compiled, state


@pytest.mark.parametrize("groups", [DND_GROUPS, ((1, 2), (3, 4), (5, 5))],
                         ids=["dnd", "pdnd_phase2"])
def test_memory_lean_step_equals_default_step_with_no_more_memory(setup, groups):
  *_, t_vars, images, labels, perm = setup
  results, temp = {}, {}
  for lean in (False, True):
    compiled, state = _compiled_step(setup, groups, lean)
    temp[lean] = compiled.memory_analysis().temp_size_in_bytes
    results[lean] = jax.device_get(compiled(state, images, labels, perm, t_vars))
  (state_d, metrics_d), (state_l, metrics_l) = results[False], results[True]
  assert sorted(metrics_d) == sorted(metrics_l)
  for k in metrics_d:
    np.testing.assert_allclose(metrics_l[k], metrics_d[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # the update is not trivially equal: every stage's parameters moved
  for k in range(1, 6):
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), state_l.params[f"stage{k}"],
                         setup[2]["params"][f"stage{k}"])
    assert max(jax.tree.leaves(moved)) > 0, f"stage {k} was not updated"
  for name in ("params", "batch_stats", "opt_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 getattr(state_l, name), getattr(state_d, name))
  assert int(state_l.step) == int(state_d.step) == 1
  assert temp[True] <= temp[False], (temp[True], temp[False])


def test_memory_lean_is_refused_without_a_teacher(setup):
  student, *_ = setup
  config = base_config("cifar100", "dnd")
  config.method.memory_lean = True
  tx = make_optimizer(config.optim, total_steps=6, phase_steps=6)
  with pytest.raises(ValueError, match="memory_lean needs a teacher"):
    steps.make_train_step(
        model=student, teacher=None, method=get_method("dnd"), groups=DND_GROUPS,
        method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,) * 3,
        std=(0.25,) * 3, batch_size=BATCH, steps_per_epoch=2)


@pytest.mark.parametrize("phase", [0, 2], ids=["dnd", "pdnd_phase3"])
def test_memory_lean_step_equals_default_step_with_stage_adapters(phase):
  """tests/test_pairs.py's cross-family pair: every boundary has a stage adapter, trained by the
  group it feeds and giving the group before it its target; Progressive DnD's last phase uses
  one of the three and leaves the others without gradient (the lean step fills in zeros). The
  lean step must still be the default step."""
  from test_pairs import STUDENT, TEACHER  # noqa: PLC0415
  from dnd_jax import adapters, models  # noqa: PLC0415
  image = (8, 8, 1)
  student = models.build_arch(STUDENT["arch"], 10, **STUDENT["arch_kwargs"])
  teacher = models.build_arch(TEACHER["arch"], 10, **TEACHER["arch_kwargs"])
  method = get_method("pdnd").for_stages(4)
  pair = adapters.for_pair(student, teacher, method, image)
  s_vars = adapters.attach(init_variables(student, jax.random.key(0), image),
                           pair.init(jax.random.key(4)))
  t_vars = init_variables(teacher, jax.random.key(1), image)
  images = jax.random.randint(jax.random.key(2), (2 * BATCH, *image), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(2 * BATCH, dtype=jnp.int32) % 10
  perm = jnp.arange(2 * BATCH, dtype=jnp.int32)
  results = {}
  for lean in (False, True):
    config = base_config("fashion_mnist", "pdnd")
    config.method.memory_lean = lean
    tx = make_optimizer(config.optim, total_steps=6, phase_steps=2)
    step = jax.jit(steps.make_train_step(
        model=student, teacher=teacher, method=method, groups=method.partition(phase),
        method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,), std=(0.25,),
        batch_size=BATCH, steps_per_epoch=2, adapters=pair))
    results[lean] = jax.device_get(step(steps.create_train_state(s_vars, tx), images, labels,
                                        perm, t_vars))
  (state_d, metrics_d), (state_l, metrics_l) = results[False], results[True]
  for k in metrics_d:
    np.testing.assert_allclose(metrics_l[k], metrics_d[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for name in ("params", "batch_stats", "opt_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 getattr(state_l, name), getattr(state_d, name))
