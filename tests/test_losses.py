"""Each loss term on a small example computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from dnd_jax import losses


def test_mse_is_the_mean_over_all_elements():
  s = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  t = jnp.array([[1.0, 0.0], [0.0, 4.0]])
  assert float(losses.mse(s, t)) == pytest.approx((0 + 4 + 9 + 0) / 4)


def test_cross_entropy_by_hand():
  logits = jnp.array([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
  assert float(losses.cross_entropy(logits, jnp.array([1]))) == pytest.approx(-math.log(0.75))
  assert float(losses.cross_entropy(logits, jnp.array([0]))) == pytest.approx(-math.log(0.25))


def test_hinton_kl_with_temperature_by_hand():
  tau = 2.0
  t = jnp.array([[0.0, 2.0 * math.log(3.0)]])  # softmax(t / 2) = [1/4, 3/4]
  s = jnp.array([[0.0, 0.0]])                  # softmax(s / 2) = [1/2, 1/2]
  expected = tau ** 2 * (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
  assert float(losses.hinton_kl(s, t, tau)) == pytest.approx(expected, rel=1e-6)
  assert float(losses.hinton_kl(t, t, tau)) == pytest.approx(0.0, abs=1e-7)


def test_hinton_kl_equals_torch_batchmean():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 4, 10)).astype(np.float32)
  ref = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(s) / 4, -1),
                                   torch.softmax(torch.tensor(t) / 4, -1), reduction="batchmean") * 16
  assert float(losses.hinton_kl(jnp.asarray(s), jnp.asarray(t), 4.0)) == pytest.approx(float(ref), rel=1e-5)


def test_attention_map_by_hand():
  # one example, 1x2 spatial, 2 channels: mean of squares over channels = [ (1+9)/2, (4+0)/2 ] = [5, 2]
  f = jnp.array([[[[1.0, 3.0], [2.0, 0.0]]]])
  a = losses.attention_map(f)
  np.testing.assert_allclose(a, [[5 / math.sqrt(29), 2 / math.sqrt(29)]], rtol=1e-6)
  g = jnp.array([[[[0.0, 0.0], [1.0, 1.0]]]])  # map [0, 1]
  d = np.array([5 / math.sqrt(29), 2 / math.sqrt(29) - 1.0])
  assert float(losses.attention_transfer(f, g)) == pytest.approx(np.mean(d ** 2), rel=1e-6)


def test_attention_maps_of_other_sizes_are_compared_at_the_students():
  """A teacher of another architecture: its map (any channels) is taken at the student's size;
  shrunk 2x, each student pixel gets the mean of its 2x2 teacher block."""
  rng = np.random.default_rng(0)
  teacher = jnp.asarray(rng.normal(size=(2, 4, 4, 5)), jnp.float32)
  student = jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)
  t_map = np.mean(np.asarray(teacher) ** 2, axis=-1).reshape(2, 2, 2, 2, 2).mean(axis=(2, 4))
  t_map = t_map.reshape(2, -1) / np.linalg.norm(t_map.reshape(2, -1), axis=-1, keepdims=True)
  np.testing.assert_allclose(losses.attention_map(teacher, (2, 2)), t_map, rtol=1e-5)
  d = np.asarray(losses.attention_map(student)) - t_map
  assert float(losses.attention_transfer(student, teacher)) == pytest.approx(np.mean(d ** 2),
                                                                             rel=1e-5)
  # the other way, a teacher map smaller than the student's is enlarged to it
  assert losses.attention_map(student, (4, 4)).shape == (2, 16)
  assert np.isfinite(float(losses.attention_transfer(teacher, student)))


def test_jacobian_matching_by_hand_and_scale_invariance():
  sg = jnp.array([[3.0, 4.0]])
  tg = jnp.array([[0.0, 2.0]])
  # normalised: [0.6, 0.8] vs [0, 1] -> 0.36 + 0.04
  assert float(losses.jacobian_matching(sg, tg, "sum")) == pytest.approx(0.40, rel=1e-6)
  assert float(losses.jacobian_matching(10 * sg, tg, "sum")) == pytest.approx(0.40, rel=1e-6)
  assert float(losses.jacobian_matching(sg, tg, "mean")) == pytest.approx(0.20, rel=1e-6)


def test_jacobian_reductions_differ_by_exactly_the_input_size():
  """"sum" over C H W elements is C H W times "mean" (Knowledge-Distillation-Zoo's F.mse_loss)."""
  k1, k2 = jax.random.split(jax.random.key(3))
  sg, tg = jax.random.normal(k1, (5, 6, 4, 3)), jax.random.normal(k2, (5, 6, 4, 3))
  total = losses.jacobian_matching(sg, tg, "sum")
  mean = losses.jacobian_matching(sg, tg, "mean")
  assert float(total) == pytest.approx(6 * 4 * 3 * float(mean), rel=1e-6)
  torch = pytest.importorskip("torch")
  flat = lambda g: torch.nn.functional.normalize(torch.tensor(np.asarray(g)).reshape(5, -1), dim=1)  # noqa: E731
  assert float(mean) == pytest.approx(float(torch.nn.functional.mse_loss(flat(sg), flat(tg))),
                                      rel=1e-5)
  with pytest.raises(ValueError, match="jacobian_reduction must be one of"):
    losses.jacobian_matching(sg, tg, "max")


def test_jacobian_default_is_the_public_implementations_form_and_weight():
  from dnd_jax.configs import base_config
  cfg = base_config("cifar100", "jacobian").method
  assert (cfg.jacobian_reduction, cfg.jacobian_weight) == ("mean", 20.0)


def test_true_class_input_gradient_of_a_linear_model():
  w = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # 3 inputs, 2 classes
  x = jnp.ones((2, 3))
  g = losses.true_class_input_gradient(lambda x: x @ w, x, jnp.array([0, 1]))
  np.testing.assert_allclose(g, [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])


def test_jacobian_term_gradient_matches_finite_differences():
  """The loss needs a second-order backward pass; check it against central differences."""
  with enable_x64():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (4, 5), jnp.float64)
    labels = jnp.array([0, 1, 2, 1])
    w_teacher = jax.random.normal(k2, (5, 3), jnp.float64)
    w0 = jax.random.normal(k3, (5, 3), jnp.float64)

    def net(w):
      return lambda x: jnp.tanh(x @ w) @ jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.5],
                                                    [0.5, 0.0, 1.0]], jnp.float64)

    tg = losses.true_class_input_gradient(net(w_teacher), x, labels)

    def loss(w):
      return losses.jacobian_matching(losses.true_class_input_gradient(net(w), x, labels), tg,
                                      "sum")

    analytic = jax.grad(loss)(w0)
    eps = 1e-6
    numeric = np.zeros(w0.shape)
    for i in range(w0.shape[0]):
      for j in range(w0.shape[1]):
        e = jnp.zeros_like(w0).at[i, j].set(eps)
        numeric[i, j] = (loss(w0 + e) - loss(w0 - e)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    assert np.abs(numeric).max() > 1e-3


def test_kd_with_alpha_zero_is_cross_entropy():
  from dnd_jax.configs import base_config
  from dnd_jax.methods import GroupOutputs, kd_loss
  cfg = base_config("fashion_mnist", "kd").method
  cfg.alpha = 0.0
  rng = np.random.default_rng(1)
  s, t = jnp.asarray(rng.normal(size=(2, 6, 10)), jnp.float32)
  labels = jnp.arange(6) % 10
  g = GroupOutputs(1, 5, 5, (s,), (None, None, None, None, t), labels, None)
  loss, _ = kd_loss(g, cfg)
  assert float(loss) == pytest.approx(float(losses.cross_entropy(s, labels)), rel=1e-6)
