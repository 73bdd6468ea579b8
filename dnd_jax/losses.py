"""Loss terms of DnD and of the baselines, as pure functions of arrays (all means are fp32).

Each function cites where its definition comes from; where a paper and its reference code
differ, the docstring says which one is followed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _f32(x):
  """At least fp32: bf16 activations are upcast for losses, fp64 (in tests) is kept."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(logits, labels):
  """Mean cross-entropy with integer labels (= the paper's L_KL against one-hot labels)."""
  return optax.softmax_cross_entropy_with_integer_labels(_f32(logits), labels).mean()


def mse(student, teacher):
  """Mean over every element, PyTorch's `F.mse_loss` default (paper Eq. 3)."""
  diff = _f32(student) - _f32(teacher)
  return jnp.mean(diff * diff)


def hinton_kl(student_logits, teacher_logits, tau: float):
  """tau^2 * KL(softmax(t / tau) || softmax(s / tau)), averaged over the batch.

  Hinton et al. (2015) scale by tau^2 so the soft term's gradient keeps its size as tau changes;
  this equals PyTorch's `F.kl_div(log_softmax(s/tau), softmax(t/tau), reduction="batchmean") * tau**2`.
  """
  log_p_s = jax.nn.log_softmax(_f32(student_logits) / tau, axis=-1)
  log_p_t = jax.nn.log_softmax(_f32(teacher_logits) / tau, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return tau ** 2 * jnp.mean(kl)


def attention_map(features, size: tuple[int, int] | None = None):
  """Zagoruyko & Komodakis (2016): the L2-normalised mean over channels of squared activations.

  `size` (H, W) resizes the map before it is normalised, where two networks' stages differ in
  size: each new pixel the mean of its block where the size divides the map's (adaptive average
  pooling, as mdistiller's AT pools the larger map), else a bilinear resize.
  """
  a = jnp.mean(jnp.square(_f32(features)), axis=-1)
  n, h, w = a.shape
  if size is not None and (h, w) != tuple(size):
    height, width = size
    if h % height == 0 and w % width == 0:
      a = a.reshape(n, height, h // height, width, w // width).mean(axis=(2, 4))
    else:
      a = jax.image.resize(a, (n, height, width), "linear")
  a = a.reshape(n, -1)
  return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def attention_transfer(student_features, teacher_features):
  """One stage's AT term as the authors' code computes it: `(at(s) - at(t)).pow(2).mean()`.

  The paper writes the (unsquared) L2 distance; its beta = 1000 belongs to the code's squared,
  element-averaged form, which is what is used here. Where the teacher's map has another size
  than the student's (a pair of other architectures), the teacher's attention map is taken at the
  student's size; the channel counts never matter (a map averages over channels).
  """
  d = (attention_map(student_features)
       - attention_map(teacher_features, student_features.shape[1:3]))
  return jnp.mean(d * d)


def normalized(x):
  flat = _f32(x.reshape(x.shape[0], -1))
  return flat / jnp.maximum(jnp.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)


def true_class_input_gradient(logits_fn, images, labels):
  """d logit_y / d x for each example: the Jacobian row that Srinivas & Fleuret (2018) match.

  `logits_fn` maps a batch of images to logits; summing the true-class logits over the batch and
  taking one gradient gives every example's own input gradient (examples are independent apart
  from BatchNorm's batch statistics, whose cross-example terms are part of the student's function
  in training mode, as in the PyTorch reference implementations).
  """
  def true_logit_sum(x):
    logits = logits_fn(x)
    return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=-1))

  return jax.grad(true_logit_sum)(images)


JACOBIAN_REDUCTIONS = ("sum", "mean")


def jacobian_matching(student_grad, teacher_grad, reduction: str = "mean"):
  """The squared difference of the L2-normalised input gradients, reduced over the input.

  "sum": the squared L2 distance per example (the paper's ||.||^2), averaged over the batch.
  "mean": the mean over every element, the form of the one public implementation
  (Knowledge-Distillation-Zoo, `kd_losses/sobolev.py`: `F.mse_loss` of the normalised
  gradients), which is "sum" divided by the input size C H W (docs/design.md section 1).
  """
  d = normalized(student_grad) - normalized(teacher_grad)
  per_example = jnp.sum(d * d, axis=-1)
  if reduction == "sum":
    return jnp.mean(per_example)
  if reduction == "mean":
    return jnp.mean(per_example) / d.shape[-1]
  raise ValueError(f"method.jacobian_reduction must be one of {JACOBIAN_REDUCTIONS}, not "
                   f"{reduction!r}.")


def accuracy(logits, labels):
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
