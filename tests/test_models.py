import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax.models import ResNet, init_variables, stage_output_shapes


@pytest.mark.parametrize("depth,expected", [(18, 11_689_512), (34, 21_797_672)])
def test_parameter_counts_equal_torchvision(depth, expected):
  model = ResNet(depth=depth, num_classes=1000, width=64, stem="imagenet")
  variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 224, 224, 3))), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected


@pytest.mark.parametrize("stem,size", [("cifar", 16), ("imagenet", 32)])
@pytest.mark.parametrize("train", [False, True])
def test_stages_in_sequence_equal_the_whole_model(stem, size, train):
  model = ResNet(depth=18, num_classes=7, width=4, stem=stem)
  variables = init_variables(model, jax.random.key(0), (size, size, 3))
  x = jax.random.normal(jax.random.key(1), (3, size, size, 3))
  mutable = ["batch_stats"] if train else False

  @jax.jit  # one program (run eagerly, each of its operations would compile on its own)
  def whole_and_in_sequence(variables, x):
    whole = model.apply(variables, x, train=train, mutable=mutable)
    h = x
    for k in range(1, 6):
      out = model.apply(variables, h, k, k, train, method="stages", mutable=mutable)
      h = (out[0] if train else out)[0]
    return (whole[0] if train else whole), h

  whole, h = whole_and_in_sequence(variables, x)
  np.testing.assert_allclose(h, whole, rtol=1e-5, atol=1e-5)
  assert whole.shape == (3, 7)


def test_stage_shapes_follow_the_design_table():
  shapes = stage_output_shapes(ResNet(depth=34, num_classes=100, width=64), (32, 32, 3))
  assert shapes == [(2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256), (2, 4, 4, 512), (2, 100)]
  imagenet = stage_output_shapes(ResNet(depth=18, num_classes=10, stem="imagenet"), (128, 128, 3))
  assert imagenet[0] == (2, 32, 32, 64) and imagenet[3] == (2, 4, 4, 512)


def test_a_stage_range_touches_only_its_batch_stats():
  model = ResNet(depth=18, num_classes=10, width=4)
  variables = init_variables(model, jax.random.key(0), (16, 16, 1))

  @jax.jit  # one program (run eagerly, each of its operations would compile on its own)
  def stages_3_4_on_features(variables, x):
    feats = model.apply(variables, x, method="stages")
    return model.apply(variables, feats[1], 3, 4, True, method="stages",
                       mutable=["batch_stats"])[1]

  updated, variables = jax.device_get((stages_3_4_on_features(variables, jnp.ones((2, 16, 16, 1))),
                                       variables))
  for name in ("stage1", "stage2"):
    jax.tree.map(np.testing.assert_array_equal, updated["batch_stats"][name],
                 variables["batch_stats"][name])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         updated["batch_stats"]["stage3"],
                                         variables["batch_stats"]["stage3"]))
  assert any(changed)


def test_bad_stage_range_and_depth_are_clear_errors():
  model = ResNet(depth=18, num_classes=10, width=4)
  variables = init_variables(model, jax.random.key(0), (8, 8, 3))
  with pytest.raises(ValueError, match="Stage range 4..2"):
    model.apply(variables, jnp.ones((1, 8, 8, 3)), 4, 2, method="stages")
  with pytest.raises(ValueError, match="depth 50"):
    init_variables(ResNet(depth=50, num_classes=10, width=4), jax.random.key(0), (8, 8, 3))


def test_bfloat16_compute_keeps_float32_parameters():
  model = ResNet(depth=18, num_classes=10, width=4, dtype=jnp.bfloat16)
  variables = init_variables(model, jax.random.key(0), (8, 8, 3))
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  assert all(x.dtype == (jnp.int32 if p[-1].key == "num_batches_tracked" else jnp.float32)
             for p, x in leaves)
  feats = jax.jit(functools.partial(model.apply, method="stages"))(variables, jnp.ones((2, 8, 8, 3)))
  assert feats[0].dtype == jnp.bfloat16 and feats[-1].dtype == jnp.float32


def test_remat_recomputes_blocks_in_the_backward_pass_with_the_same_values():
  """`remat` changes what the backward pass keeps, not the model: the same variables, outputs,
  statistics and gradients, and a gradient program that runs the blocks' convolutions twice."""
  import ml_collections

  from dnd_jax.models import build_model

  spec = ml_collections.ConfigDict({"depth": 18, "width": 4, "stem": "cifar", "remat": True})
  lean = build_model(spec, num_classes=5)
  plain = lean.clone(remat=False)
  assert lean.remat and not plain.remat
  variables = init_variables(plain, jax.random.key(0), (8, 8, 3))
  abstract = jax.eval_shape(lambda k: init_variables(lean, k, (8, 8, 3)), jax.random.key(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 4))  # stage 1's output: stage 2's input

  def loss(params, model):  # stage 2 alone: two blocks, the first with a projection
    (out,), updated = model.apply({**variables, "params": params}, x, 2, 2, True,
                                  method="stages", mutable=["batch_stats"])
    return jnp.sum(out ** 2), updated["batch_stats"]

  results, convs = {}, {}
  for name, model in (("plain", plain), ("remat", lean)):
    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    convs[name] = grad_fn.lower(variables["params"], model).as_text().count("convolution(")
    results[name] = grad_fn(variables["params"], model)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               results["remat"], results["plain"])
  # 5 convolutions forward, 5 for the weights' gradients, 3 for the inputs' (not stage 2's own
  # input, which the first block's two convolutions read); then the 5 once more, recomputed
  assert convs["plain"] == 13 and convs["remat"] == 13 + 5, convs
  # no gradient, nothing to recompute: evaluation runs the plain blocks
  np.testing.assert_array_equal(lean.apply(variables, x, 2, 2, method="stages")[0],
                                plain.apply(variables, x, 2, 2, method="stages")[0])
