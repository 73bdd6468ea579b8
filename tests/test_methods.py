"""The stage-partition mechanism: gradient isolation, frozen teacher, Progressive-DnD phases."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnd_jax import steps
from dnd_jax.losses import mse as losses_mse
from dnd_jax.data import augment
from dnd_jax.configs import base_config
from dnd_jax.methods import METHODS, get_method
from dnd_jax.models import ResNet, init_variables
from dnd_jax.optim import make_optimizer

DND_GROUPS = get_method("dnd").partition(0)  # {1}..{5}: the paper's ResNets

IMAGE = (8, 8, 1)


@pytest.fixture(scope="module")
def setup():
  student = ResNet(depth=18, num_classes=10, width=4)
  teacher = ResNet(depth=34, num_classes=10, width=4)
  s_vars = init_variables(student, jax.random.key(0), IMAGE)
  t_vars = init_variables(teacher, jax.random.key(1), IMAGE)
  images = jax.random.normal(jax.random.key(2), (6, *IMAGE))
  labels = jnp.arange(6) % 10
  feats = jax.jit(functools.partial(teacher.apply, method="stages"))(t_vars, images)
  return student, teacher, s_vars, t_vars, images, labels, feats


_GRAD_FNS = {}


def _grads(setup, groups, params=None, name="dnd"):
  """Gradient of the summed group losses; one compiled function per partition."""
  student, teacher, s_vars, t_vars, images, labels, feats = setup
  if (groups, name) not in _GRAD_FNS:
    cfg = base_config("fashion_mnist", name).method
    fn = functools.partial(steps.group_losses, model=student, groups=groups,
                           method=get_method(name), method_config=cfg, labels=labels,
                           teacher_logits_fn=None)
    _GRAD_FNS[groups, name] = jax.jit(jax.grad(
        lambda p, stats, x, f: fn(p, stats, images=x, teacher_feats=f)[0]))
  return _GRAD_FNS[groups, name](s_vars["params"] if params is None else params,
                                 s_vars["batch_stats"], images, feats)


def _perturb(params, stage):
  # numpy, here and in the comparisons: JAX would compile each operation for each shape
  return {**params, stage: jax.tree.map(lambda p: p + 0.3 * np.sign(p + 1e-3),
                                        jax.device_get(params[stage]))}


@pytest.mark.parametrize("groups", [DND_GROUPS, ((1, 2), (3, 4), (5, 5)), ((1, 4), (5, 5))])
def test_changing_one_group_leaves_every_other_groups_gradient_unchanged(setup, groups):
  base = jax.device_get(_grads(setup, groups))
  for first, last in groups:
    params = setup[2]["params"]
    for k in range(first, last + 1):
      params = _perturb(params, f"stage{k}")
    changed = jax.device_get(_grads(setup, groups, params))
    for k in range(1, 6):
      inside = first <= k <= last
      same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.allclose(a, b, rtol=1e-6, atol=0)),
                                          base[f"stage{k}"], changed[f"stage{k}"]))
      if not inside:
        assert all(same), f"stage {k} gradient changed when group {first}-{last} was perturbed"
      elif first == last:
        assert not all(same), f"perturbing stage {k} did not change its own gradient"


def test_dnd_gradient_equals_each_groups_loss_taken_alone(setup):
  total = _grads(setup, DND_GROUPS)
  for group in DND_GROUPS:
    alone = _grads(setup, (group,))
    k = f"stage{group[0]}"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 total[k], alone[k])


def test_the_registry_takes_only_partitions_that_tile_the_five_stages():
  from dnd_jax.methods import Method, ce_loss, register  # noqa: PLC0415
  for groups in [((1, 2), (4, 5)), ((1, 3), (3, 5)), ((1, 4),), ((2, 5),)]:
    with pytest.raises(ValueError, match="do not tile stages 1..5"):
      register(Method("gappy", lambda n, groups=groups: ((0.0, groups),), ce_loss))
  assert "gappy" not in METHODS
  with pytest.raises(ValueError, match="Unknown method 'fitnet'"):
    get_method("fitnet")
  # a partition written for five stages is refused for a network of four
  fixed = Method("fixed", lambda n: ((0.0, ((1, 2), (3, 5))),), ce_loss)
  with pytest.raises(ValueError, match="do not tile stages 1..4"):
    fixed.for_stages(4)


def test_progressive_dnd_switches_exactly_at_the_thirds():
  pdnd = get_method("pdnd")
  total = 30
  phases = [pdnd.phase_at(s, total) for s in range(total)]
  assert phases == [0] * 10 + [1] * 10 + [2] * 10
  assert pdnd.partition(1) == ((1, 2), (3, 4), (5, 5))
  assert pdnd.partition(2) == ((1, 4), (5, 5))
  assert get_method("pdnd").phase_starts(300) == [0, 100, 200]


def test_partitions_are_functions_of_the_stage_count():
  """The paper's five stages as registered; four (CIFAR ResNets, WRN, ShuffleNets) once resolved:
  DnD a group per stage, the single-group methods one group, Progressive DnD merging the body
  stages in pairs while the head stays alone, at equal fractions of training."""
  assert get_method("pdnd").phases == get_method("pdnd").for_stages(5).phases == (
      (0.0, ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5))), (1 / 3, ((1, 2), (3, 4), (5, 5))),
      (2 / 3, ((1, 4), (5, 5))))
  assert get_method("pdnd").for_stages(4).phases == (
      (0.0, ((1, 1), (2, 2), (3, 3), (4, 4))), (1 / 3, ((1, 2), (3, 3), (4, 4))),
      (2 / 3, ((1, 3), (4, 4))))
  assert get_method("dnd").for_stages(4).phases == ((0.0, ((1, 1), (2, 2), (3, 3), (4, 4))),)
  for name in ("teacher", "kd", "at", "jacobian"):
    assert get_method(name).phases == ((0.0, ((1, 5),)),)
    assert get_method(name).for_stages(4).phases == ((0.0, ((1, 4),)),)
  assert get_method("pdnd").for_stages(4).phase_starts(300) == [0, 100, 200]


def _train_step(setup, groups, name, tx, steps_per_epoch=4):
  student, teacher, s_vars, t_vars, *_ = setup
  config = base_config("fashion_mnist", name)
  config.data.crop_padding = 0
  config.data.flip = False
  return jax.jit(steps.make_train_step(
      model=student, teacher=teacher, method=get_method(name), groups=groups,
      method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,), std=(0.25,),
      batch_size=4, steps_per_epoch=steps_per_epoch))


def test_progressive_dnd_keeps_optimizer_state_across_the_switch(setup):
  student, teacher, s_vars, t_vars, *_ = setup
  images = jax.random.randint(jax.random.key(3), (16, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(16) % 10
  perm = jnp.arange(16, dtype=jnp.int32)
  config = base_config("fashion_mnist", "pdnd")
  tx = make_optimizer(config.optim, total_steps=6, phase_steps=2)
  state = steps.create_train_state(s_vars, tx)
  pdnd = get_method("pdnd")
  phase0 = _train_step(setup, pdnd.partition(0), "pdnd", tx)
  phase1 = _train_step(setup, pdnd.partition(1), "pdnd", tx)
  state, m0 = phase0(state, images, labels, perm, t_vars)
  state, _ = phase0(state, images, labels, perm, t_vars)
  before = state
  state, m1 = phase1(state, images, labels, perm, t_vars)
  assert int(state.step) == 3
  assert "mse_1" in m0 and "mse_1-2" in m1 and "mse_3-4" in m1 and "mse_1" not in m1

  # Recompute the phase-1 update by hand from the state before it: the momentum buffer must be
  # mu * (buffer carried over from phase 0) + (g + wd * p), i.e. not reset at the switch.
  data_config = base_config("fashion_mnist", "pdnd").data
  data_config.crop_padding, data_config.flip = 0, False

  @jax.jit  # one program (run eagerly, each of its operations would compile on its own)
  def reference_grads(params, batch_stats, t_vars, images, labels):
    x = augment.train_preprocess(images, jax.random.key(0), data_config, (0.5,), (0.25,))
    feats = teacher.apply(t_vars, x, method="stages")
    return jax.grad(lambda p: steps.group_losses(
        p, batch_stats, model=student, groups=pdnd.partition(1), method=pdnd,
        method_config=config.method, images=x, labels=labels, teacher_feats=feats,
        teacher_logits_fn=None)[0])(params)

  grads = reference_grads(before.params, before.batch_stats, t_vars, images[8:12], labels[8:12])
  mu = float(state.opt_state.hyperparams["momentum"])
  wd = config.optim.weight_decay
  # in numpy from here: JAX would compile each operation for each shape
  old_trace, new_trace, grads, params = jax.device_get((
      before.opt_state.inner_state[1].trace, state.opt_state.inner_state[1].trace, grads,
      before.params))
  expected = jax.tree.map(lambda t, g, p: mu * t + g + wd * p, old_trace, grads, params)
  # BatchNorm over 4 examples at 1x1 spatial size (stage 4) amplifies fp32 rounding, so compare
  # each tensor by its relative error in norm
  for a, b in zip(jax.tree.leaves(new_trace), jax.tree.leaves(expected)):
    assert float(np.linalg.norm(a - b)) <= 1e-3 * float(np.linalg.norm(b)) + 1e-6
  # ... and is far from what a reset buffer would hold
  reset = jax.tree.map(lambda g, p: g + wd * p, grads, params)
  gap = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), new_trace, reset)))
  assert gap > 1e-2



def test_the_teacher_runs_in_inference_mode(setup):
  """The step's stage targets are the teacher's outputs with its BatchNorm running statistics,
  not with the batch's: shifted running statistics change the target, and the step follows."""
  student, teacher, s_vars, t_vars, *_ = setup
  t_vars = {"params": t_vars["params"],
            "batch_stats": jax.tree.map(lambda x: x + 0.5, t_vars["batch_stats"])}
  images = jax.random.randint(jax.random.key(3), (4, *IMAGE), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(4) % 10
  config = base_config("fashion_mnist", "dnd")
  tx = make_optimizer(config.optim, total_steps=4, phase_steps=4)
  step = _train_step(setup, DND_GROUPS, "dnd", tx, steps_per_epoch=1)
  _, metrics = step(steps.create_train_state(s_vars, tx), images, labels,
                    jnp.arange(4, dtype=jnp.int32), t_vars)
  data_config = base_config("fashion_mnist", "dnd").data
  data_config.crop_padding, data_config.flip = 0, False

  @jax.jit  # one program (run eagerly, each of its operations would compile on its own)
  def stage1_mse(s_vars, t_vars, images):
    x = augment.train_preprocess(images, jax.random.key(0), data_config, (0.5,), (0.25,))
    s1 = student.apply(s_vars, x, 1, 1, True, method="stages", mutable=["batch_stats"])[0][0]
    return {mode: losses_mse(s1, teacher.apply(t_vars, x, 1, 1, mode == "train", method="stages",
                                               mutable=["batch_stats"])[0][0])
            for mode in ("inference", "train")}

  mse = {mode: float(value) for mode, value in stage1_mse(s_vars, t_vars, images).items()}
  assert float(metrics["mse_1"]) == pytest.approx(mse["inference"], rel=1e-5)
  assert abs(mse["train"] - mse["inference"]) > 1e-2 * mse["inference"]  # the check has teeth


def test_the_seed_lives_in_the_state_so_seeds_share_one_compiled_step(setup):
  """Runs that differ only in their seed lower to the same program (one compile, cache hits)."""
  student, teacher, s_vars, t_vars, *_ = setup
  config = base_config("fashion_mnist", "dnd")
  tx = make_optimizer(config.optim, total_steps=4, phase_steps=4)
  step = steps.make_train_step(
      model=student, teacher=teacher, method=get_method("dnd"), groups=DND_GROUPS,
      method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,), std=(0.25,),
      batch_size=4, steps_per_epoch=4)
  images = jnp.zeros((16, *IMAGE), jnp.uint8)
  args = (images, jnp.arange(16) % 10, jnp.arange(16, dtype=jnp.int32), t_vars)
  text = [jax.jit(step).lower(steps.create_train_state(s_vars, tx, seed), *args).as_text()
          for seed in (0, 1)]
  assert text[0] == text[1]
  keys = [steps.create_train_state(s_vars, tx, seed).rng for seed in (0, 1)]
  assert not np.array_equal(keys[0], keys[1])


@pytest.fixture
def dummy_method():
  """The README's recipe: one group loss, one registry entry, one config."""
  from dnd_jax import losses, methods  # noqa: PLC0415

  def smoothed_ce(g, cfg):
    """Cross-entropy with label smoothing, the method's own field `smoothing`."""
    n = g.student_out.shape[-1]
    targets = jax.nn.one_hot(g.labels, n) * (1 - cfg.smoothing) + cfg.smoothing / n
    ce = optax.softmax_cross_entropy(g.student_out, targets).mean()
    return ce, {"ce": losses.cross_entropy(g.student_out, g.labels)}

  method = methods.register(methods.Method(
      "smoothed", methods.one_group, smoothed_ce, label="Label smoothing",
      config={"smoothing": 0.1}, needs_teacher=False, base_lr=0.02))
  yield method
  del methods.METHODS["smoothed"]


@pytest.mark.slow
def test_a_registered_method_gets_its_config_and_trains_end_to_end(dummy_method, tmp_path):
  from conftest import tiny_config  # noqa: PLC0415
  from dnd_jax.train import read_metrics, train_and_evaluate  # noqa: PLC0415

  config = tiny_config("smoothed", num_epochs=2, **{"data.fraction": 0.02})
  assert (config.method.smoothing, config.optim.lr, config.model.depth) == (0.1, 0.02, 18)
  assert "alpha" not in config.method  # another method's field is not this method's
  summary = train_and_evaluate(config, str(tmp_path))
  history = read_metrics(str(tmp_path))
  assert summary["method"] == "smoothed" and [r["epoch"] for r in history] == [1, 2]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert summary["final_accuracy"] > 0.2  # chance is 0.1


def test_a_config_without_the_methods_fields_is_a_clear_error():
  config = base_config("fashion_mnist", "teacher").method
  config.name = "kd"
  with pytest.raises(ValueError, match="config.method lacks alpha, tau"):
    get_method("kd").check_config(config)
  jac = base_config("fashion_mnist", "jacobian").method
  jac.memory_lean = True
  with pytest.raises(ValueError, match="memory_lean=False"):
    get_method("jacobian").check_config(jac)


# --- a pair whose stage shapes differ: the stage adapters belong to their groups ----------------


@pytest.fixture(scope="module")
def pair_setup():
  """tests/test_pairs.py's cross-family pair (a small CIFAR ResNet teaching a small ShuffleNetV2,
  four stages, other shapes at every boundary), with its stage adapters."""
  from test_pairs import STUDENT, TEACHER  # noqa: PLC0415
  from dnd_jax import adapters, models  # noqa: PLC0415
  student = models.build_arch(STUDENT["arch"], 10, **STUDENT["arch_kwargs"])
  teacher = models.build_arch(TEACHER["arch"], 10, **TEACHER["arch_kwargs"])
  pair = adapters.for_pair(student, teacher, get_method("dnd").for_stages(4), IMAGE)
  variables = adapters.attach(init_variables(student, jax.random.key(0), IMAGE),
                              pair.init(jax.random.key(4)))
  t_vars = init_variables(teacher, jax.random.key(1), IMAGE)
  images = jax.random.normal(jax.random.key(2), (6, *IMAGE))
  feats = teacher.apply(t_vars, images, method="stages")
  return student, pair, variables, images, jnp.arange(6) % 10, feats


def _pair_grads(pair_setup, groups, params=None):
  student, pair, variables, images, labels, feats = pair_setup
  key = ("pair", groups)
  if key not in _GRAD_FNS:
    fn = functools.partial(steps.group_losses, model=student, groups=groups,
                           method=get_method("dnd").for_stages(4),
                           method_config=base_config("fashion_mnist", "dnd").method,
                           labels=labels, teacher_logits_fn=None, adapters=pair)
    _GRAD_FNS[key] = jax.jit(jax.grad(
        lambda p, stats, x, f: fn(p, stats, images=x, teacher_feats=f)[0]))
  return _GRAD_FNS[key](variables["params"] if params is None else params,
                        variables["batch_stats"], images, feats)


def _owned(group):
  """The entries of a group's parameters: its stages and the adapter at its input."""
  first, last = group
  return [("stage%d" % k,) for k in range(first, last + 1)] + [("adapters", f"in{first}")]


def _entry(tree, path):
  for key in path:
    if key not in tree:
      return None
    tree = tree[key]
  return tree


def _norm(tree) -> float:
  return sum(float(np.sum(np.abs(x))) for x in jax.tree.leaves(jax.device_get(tree)))


@pytest.mark.parametrize("groups", [((1, 1), (2, 2), (3, 3), (4, 4)), ((1, 2), (3, 3), (4, 4))])
def test_with_stage_adapters_each_groups_loss_reaches_only_its_own_parameters(pair_setup, groups):
  """Each group's gradient, its input adapter's included, is its own loss's and no other's: taken
  alone, a group's loss has no gradient outside its stages and its adapter (not even at the next
  group's adapter, which gives it its target with the gradient stopped), and the partition's
  gradient of its parameters is that loss's."""
  total = _pair_grads(pair_setup, groups)
  everything = [(f"stage{k}",) for k in range(1, 5)] + [("adapters", f"in{k}") for k in (2, 3, 4)]
  for group in groups:
    alone = _pair_grads(pair_setup, (group,))
    for path in everything:
      g = _entry(alone, path)
      if path in _owned(group):
        assert g is not None and _norm(g) > 0, f"{path} got no gradient from group {group}"
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     _entry(total, path), g)
      else:
        assert g is None or _norm(g) == 0, f"group {group}'s loss reached {path}"


def test_with_stage_adapters_a_group_reaches_the_group_before_only_through_its_target(pair_setup):
  """Perturbing one group's parameters (its stages and adapter) changes no other group's
  gradient, except the gradient of the group just before it: the adapter at a boundary gives
  that group its target (its value, not a gradient)."""
  groups = ((1, 1), (2, 2), (3, 3), (4, 4))
  base = _pair_grads(pair_setup, groups)
  for group in groups:
    params = pair_setup[2]["params"]
    for path in _owned(group):
      if _entry(params, path) is None:
        continue
      if len(path) == 1:
        params = _perturb(params, path[0])
      else:
        params = {**params, "adapters": _perturb(params["adapters"], path[1])}
    changed = _pair_grads(pair_setup, groups, params)
    for other in groups:
      same = all(all(jax.tree.leaves(jax.tree.map(
          lambda a, b: bool(np.allclose(a, b, rtol=1e-6, atol=0)),
          _entry(base, path), _entry(changed, path)))) for path in _owned(other)
          if _entry(base, path) is not None)
      if other == group:
        assert not same, f"perturbing group {group} did not change its own gradient"
      elif other[1] + 1 == group[0]:
        assert not same, f"group {other}'s target did not follow group {group}'s adapter"
      else:
        assert same, f"group {other}'s gradient changed when group {group} was perturbed"
