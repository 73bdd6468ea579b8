"""Training methods as data: a stage partition per phase, and one loss per group of stages.

docs/design.md section 1: every method (DnD, Progressive DnD, vanilla KD, AT+CE, Jacobian+CE, teacher
training) is a partition of the five stages into contiguous groups plus a loss for each group. The
trainer runs each group's student stages on the *stopped teacher feature* at the group's input,
sums the group losses, and so every student parameter gets its gradient from its own group alone.

To add a method: write its group loss here (a function of `GroupOutputs` and the method config
that returns `(loss, metrics)`), register it in `METHODS`, and add a config.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from dnd_jax import losses
from dnd_jax.models import NUM_STAGES

Group = tuple[int, int]  # (first stage, last stage), both inclusive


@dataclasses.dataclass(frozen=True)
class GroupOutputs:
  """What a group loss can see. `student` holds this group's stage outputs (stages first..last);
  `teacher` holds all five teacher stage outputs (None when there is no teacher)."""

  first: int
  last: int
  student: tuple
  teacher: tuple | None
  labels: jax.Array
  images: jax.Array
  student_logits_fn: Callable | None = None  # images -> logits, the whole student (training mode)
  teacher_logits_fn: Callable | None = None  # images -> logits, the frozen teacher

  @property
  def is_head(self) -> bool:
    return self.last == NUM_STAGES

  @property
  def student_out(self):
    return self.student[-1]

  @property
  def teacher_out(self):
    return self.teacher[self.last - 1]


GroupLoss = Callable[[GroupOutputs, "ml_collections.ConfigDict"], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A named method: its phases (start as a fraction of training, partition) and its group loss."""

  name: str
  phases: tuple[tuple[float, tuple[Group, ...]], ...]
  group_loss: GroupLoss
  needs_teacher: bool = True

  def phase_starts(self, total_steps: int) -> list[int]:
    """First step of each phase; `round` keeps 1/3 of 300 at 100, not 99."""
    return [int(round(frac * total_steps)) for frac, _ in self.phases]

  def phase_at(self, step: int, total_steps: int) -> int:
    starts = self.phase_starts(total_steps)
    return max(i for i, s in enumerate(starts) if s <= step)

  def partition(self, phase: int) -> tuple[Group, ...]:
    return self.phases[phase][1]


# --- group losses -------------------------------------------------------------------------------


def dnd_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Paper Eq. 3 for every group, plus Eq. 4 (labels) and an optional Hinton term at the head.

  The head's MSE compares softmax probabilities by default, as Table 4 puts the softmax inside
  stage 5 (`cfg.head_mse_on = "probs"`); "logits" compares the logits instead.
  """
  s, t = g.student_out, g.teacher_out
  tag = f"{g.first}" if g.first == g.last else f"{g.first}-{g.last}"
  metrics = {}
  if g.is_head:
    if cfg.head_mse_on == "probs":
      feature_loss = losses.mse(jax.nn.softmax(s), jax.nn.softmax(t))
    elif cfg.head_mse_on == "logits":
      feature_loss = losses.mse(s, t)
    else:
      raise ValueError(f"method.head_mse_on must be 'probs' or 'logits', not {cfg.head_mse_on!r}.")
  else:
    feature_loss = losses.mse(s, t)
  metrics[f"mse_{tag}"] = feature_loss
  loss = feature_loss
  if g.is_head:
    ce = losses.cross_entropy(s, g.labels)
    metrics["ce"] = ce
    loss = loss + cfg.label_weight * ce
    if cfg.hinton_weight:
      kl = losses.hinton_kl(s, t, cfg.tau)
      metrics["kl"] = kl
      loss = loss + cfg.hinton_weight * kl
  return loss, metrics


def ce_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Plain cross-entropy: teacher training."""
  ce = losses.cross_entropy(g.student_out, g.labels)
  return ce, {"ce": ce}


def kd_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Hinton et al. (2015): (1 - alpha) * CE + alpha * tau^2 * KL(teacher || student)."""
  ce = losses.cross_entropy(g.student_out, g.labels)
  kl = losses.hinton_kl(g.student_out, g.teacher_out, cfg.tau)
  return (1.0 - cfg.alpha) * ce + cfg.alpha * kl, {"ce": ce, "kl": kl}


def at_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Zagoruyko & Komodakis (2016): CE + beta / 2 * sum of the AT terms after stages 1-4."""
  ce = losses.cross_entropy(g.student_out, g.labels)
  at_terms = [losses.attention_transfer(g.student[k - g.first], g.teacher[k - 1])
              for k in range(max(g.first, 1), min(g.last, 4) + 1)]
  at = sum(at_terms)
  return ce + cfg.beta / 2.0 * at, {"ce": ce, "at": at}


def jacobian_loss(g: GroupOutputs, cfg) -> tuple[jax.Array, dict]:
  """Srinivas & Fleuret (2018): CE + lambda * ||normalised d s_y/dx - normalised d t_y/dx||^2.

  `cfg.jacobian_reduction` sums the squared difference over the input's elements or averages it
  (the public implementation's form, with its lambda 20 as the default; README "Jacobian matching").

  The student's input gradient depends on its parameters, so the loss's gradient is a
  second-order backward pass (the paper's Table 2 shows it about 3x slower than KD).
  """
  ce = losses.cross_entropy(g.student_out, g.labels)
  student_grad = losses.true_class_input_gradient(g.student_logits_fn, g.images, g.labels)
  teacher_grad = jax.lax.stop_gradient(
      losses.true_class_input_gradient(g.teacher_logits_fn, g.images, g.labels))
  jac = losses.jacobian_matching(student_grad, teacher_grad, cfg.jacobian_reduction)
  return ce + cfg.jacobian_weight * jac, {"ce": ce, "jacobian": jac}


# --- the registry -------------------------------------------------------------------------------

ALL_STAGES: tuple[Group, ...] = ((1, NUM_STAGES),)
DND_GROUPS: tuple[Group, ...] = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5))

METHODS: dict[str, Method] = {
    "teacher": Method("teacher", ((0.0, ALL_STAGES),), ce_loss, needs_teacher=False),
    "dnd": Method("dnd", ((0.0, DND_GROUPS),), dnd_loss),
    "pdnd": Method("pdnd", ((0.0, DND_GROUPS),
                            (1.0 / 3.0, ((1, 2), (3, 4), (5, 5))),
                            (2.0 / 3.0, ((1, 4), (5, 5)))), dnd_loss),
    "kd": Method("kd", ((0.0, ALL_STAGES),), kd_loss),
    "at": Method("at", ((0.0, ALL_STAGES),), at_loss),
    "jacobian": Method("jacobian", ((0.0, ALL_STAGES),), jacobian_loss),
}


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; config.method.name must be one of {sorted(METHODS)}.")
  return METHODS[name]


def tiles_all_stages(groups: tuple[Group, ...]) -> bool:
  """True when the groups tile stages 1..5 in order, which every method must."""
  expected = 1
  for first, last in groups:
    if first != expected or last < first:
      return False
    expected = last + 1
  return expected == NUM_STAGES + 1


for _m in METHODS.values():
  for _, _groups in _m.phases:
    assert tiles_all_stages(_groups), (_m.name, _groups)
del _m, _groups
