"""Stage adapters: what connects a teacher and a student whose stage shapes differ.

DnD trains student stage k on the teacher's feature at its input (teacher stage k-1's output) and
trains student stage k-1 to produce that feature (docs/design.md section 1): what one stage learns
to produce is what the next learns to consume, so the stages compose end to end. Across
architectures the two networks' features differ in shape (channels, spatial size or both) at
some boundaries. There the *stage adapter* `in{k}` (k = 2..N) maps teacher stage k-1's feature
into the student's space, the shape of student stage k-1's output, and stands in for the
teacher's feature on both sides of the boundary (docs/design.md, "Stage adapters"):

- as the input of student stage k, in the group that starts at k, which trains it (its gradient
  comes from that group's loss alone, as the group's stages' do);
- as the target of student stage k-1, with its gradient stopped, in the group that ends at k-1
  (`methods.GroupOutputs.teacher_out`).

One adapter on both sides keeps DnD's composition: stage k-1 learns to produce what stage k
consumes, so the student runs end to end without adapters. (Two independent adapters, one mapping
the student's output into the teacher's shape for the loss and one mapping the teacher's feature
to the student's input, train each group well but nothing ties the pair at a boundary to each
other: at tiny size the groups' training accuracy reached 64% and the student alone stayed at
chance.) The image (stage 1's input) and the logits (the head's output) have the same shape in
both networks and need none; neither does a boundary where the shapes agree, so a pair of equal
shapes (ResNet34 -> ResNet18) has no adapters and trains exactly as before.

The adapters live in the train state beside the student's stages, under the `ADAPTERS` key of its
params and BatchNorm statistics (so they are optimised, checkpointed and resumed with it), and are
dropped wherever the student alone is wanted: `steps.TrainState.variables` (evaluation, the best
and the exported models) has no such key.

An adapter is a convolution, a BatchNorm and a ReLU, as the field's connectors are (mdistiller's
`ConvReg`): a 1x1 convolution where only the channels differ, a strided convolution where the
teacher's map is larger (3x3 stride 2 for twice the size, as ConvReg), a transposed one where it
is smaller (4x4 stride 2 for half the size, as ConvReg). The ReLU keeps the targets within what
every student stage can produce: most stages end in a ReLU, and without it a stage had to match
a normalised (half negative) target and the student alone stayed at chance; a stage that ends in
a residual sum or a linear bottleneck matches a non-negative target as well.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnd_jax.models import BatchNorm, conv_init, stage_output_shapes

log = logging.getLogger(__name__)

ADAPTERS = "adapters"  # their key in the train state's params and batch_stats


def _down(n: int, m: int) -> tuple[int, int, int]:
  """(kernel, stride, padding) of a convolution taking n positions to m <= n: stride r with a
  (2r - 1) kernel padded r - 1 gives ceil(n / r) (1x1 for r = 1, ConvReg's 3x3 / 2 for r = 2);
  where no r gives m, ConvReg's unpadded (n - m + 1) kernel."""
  r = -(-n // m)
  if -(-n // r) == m:
    return 2 * r - 1, r, r - 1
  return n - m + 1, 1, 0


def _up(n: int, m: int) -> tuple[int, int, int]:
  """(kernel, stride, lax padding) of a transposed convolution taking n positions to n * r >=
  m (cropped to m after): PyTorch's kernel 2r with padding r / 2 for an even r (ConvReg's 4x4 / 2
  for r = 2), kernel r unpadded for an odd one; lax pads the dilated input by kernel - 1 -
  PyTorch's padding."""
  r = -(-m // n)
  kernel, torch_pad = (2 * r, r // 2) if r % 2 == 0 else (r, 0)
  return kernel, r, kernel - 1 - torch_pad


class Connector(nn.Module):
  """A convolution, a BatchNorm and a ReLU from a feature map to `shape` (H, W, C), per example."""

  shape: tuple[int, int, int]
  dtype: Any = jnp.float32
  bn_momentum: float = 0.1

  @nn.compact
  def __call__(self, x, train: bool = True):
    (h, w), (height, width, channels) = x.shape[1:3], self.shape
    conv = functools.partial(nn.Conv, channels, use_bias=False, kernel_init=conv_init,
                             dtype=self.dtype, name="conv")
    x = x.astype(self.dtype)
    if h >= height and w >= width:
      (kh, sh, ph), (kw, sw, pw) = _down(h, height), _down(w, width)
      y = conv((kh, kw), (sh, sw), padding=((ph, ph), (pw, pw)))(x)
    elif h <= height and w <= width:
      (kh, sh, ph), (kw, sw, pw) = _up(h, height), _up(w, width)
      y = nn.ConvTranspose(channels, (kh, kw), (sh, sw), padding=((ph, ph), (pw, pw)),
                           use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                           name="conv")(x)[:, :height, :width]
    else:
      raise ValueError(f"A feature map of {h}x{w} cannot be adapted to {height}x{width}: one side "
                       "grows while the other shrinks.")
    return nn.relu(BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                             dtype=self.dtype, name="bn")(y))


@dataclasses.dataclass(frozen=True)
class StageAdapters:
  """The adapters of one student/teacher pair under one method: (name, connector, the per-example
  shape of the teacher feature it maps) for each `in{k}`. Empty (false) where every boundary the
  method's groups meet has equal shapes."""

  connectors: tuple[tuple[str, Connector, tuple[int, ...]], ...] = ()

  def __bool__(self) -> bool:
    return bool(self.connectors)

  def _find(self, k: int):
    return next((c for c in self.connectors if c[0] == f"in{k}"), None)

  def init(self, key: jax.Array) -> dict:
    """Their parameters and BatchNorm statistics, {"params": {name: ...}, "batch_stats": ...}."""
    variables = {"params": {}, "batch_stats": {}}
    for i, (name, connector, source) in enumerate(self.connectors):
      v = connector.init(jax.random.fold_in(key, i), jnp.zeros((2, *source), jnp.float32), False)
      for collection in variables:
        variables[collection][name] = v[collection]
    return variables

  def to_student(self, variables: dict, k: int, x) -> tuple[jax.Array, dict]:
    """Teacher stage k-1's feature `x` in the student's space (what student stage k takes and
    student stage k-1 is trained to produce), in training mode, with the adapter's new
    BatchNorm statistics as {name: ...}; (`x`, {}) where the pair has no adapter there.
    `variables` holds the adapters' entries ({"params": {name: ...}, "batch_stats": ...})."""
    found = self._find(k)
    if found is None:
      return x, {}
    name, connector, _ = found
    own = {"params": variables["params"][name], "batch_stats": variables["batch_stats"][name]}
    y, updated = connector.apply(own, x, True, mutable=["batch_stats"])
    return y, {name: updated["batch_stats"]}

  def target(self, variables: dict, last: int, x) -> jax.Array | None:
    """The target of the group that ends at stage `last`, where the pair has an adapter after
    it: teacher stage `last`'s feature `x` through `in{last+1}`, its gradient stopped (that
    adapter is the next group's to train); None where the shapes agree (`x` is the target)."""
    if self._find(last + 1) is None:
      return None
    return jax.lax.stop_gradient(self.to_student(variables, last + 1, x)[0])

  def names_of_group(self, first: int) -> tuple[str, ...]:
    """The adapters the group that starts at stage `first` trains: its input's, if any."""
    return (f"in{first}",) if self._find(first) is not None else ()

  def describe(self) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, source))} -> {'x'.join(map(str, c.shape))}"
                     for name, c, source in self.connectors)


NONE = StageAdapters()


def for_pair(student: nn.Module, teacher: nn.Module, method, image_shape) -> StageAdapters:
  """The adapters that `method` (resolved for the pair's stage count: `Method.for_stages`) needs
  between `student` and `teacher` on images of `image_shape` (H, W, C): `in{k}` wherever a group
  starts at stage k > 1 (where the previous group, in that phase, ends) and teacher stage k-1's
  output has another shape than student stage k-1's. Shapes come from an abstract evaluation of
  both networks; the adapters compute in the student's dtype."""
  if student.num_stages != teacher.num_stages:
    raise ValueError(f"The student has {student.num_stages} stages and the teacher "
                     f"{teacher.num_stages}: distillation pairs stage k of one with stage k of the "
                     "other.")
  firsts = sorted({first for _, groups in method.phases for first, _ in groups if first > 1})
  if not firsts:  # one group from the input (KD, AT, ...): no stage boundary, nothing to trace
    return NONE
  s_shapes = [s[1:] for s in stage_output_shapes(student, image_shape)]
  t_shapes = [t[1:] for t in stage_output_shapes(teacher, image_shape)]
  make = functools.partial(Connector, dtype=student.dtype, bn_momentum=student.bn_momentum)
  adapters = StageAdapters(tuple((f"in{k}", make(tuple(s_shapes[k - 2])), tuple(t_shapes[k - 2]))
                                 for k in firsts if s_shapes[k - 2] != t_shapes[k - 2]))
  if adapters:
    log.info(f"Stage adapters (the teacher's and the student's stage shapes differ): "
             f"{adapters.describe()}.")
  return adapters


# --- the train state's trees: the student's entries and the adapters' ----------------------------


def attach(variables: dict, adapter_variables: dict) -> dict:
  """The student's variables with the adapters' beside its stages (unchanged when there are
  none, so that a pair of equal shapes keeps the student's layout)."""
  if not adapter_variables.get("params"):
    return variables
  return {c: {**tree, ADAPTERS: adapter_variables[c]} for c, tree in variables.items()}


def split(tree: dict) -> tuple[dict, dict]:
  """(the student's entries of a params or batch_stats tree, the adapters' ({} if none))."""
  if ADAPTERS not in tree:
    return tree, {}
  return {k: v for k, v in tree.items() if k != ADAPTERS}, tree[ADAPTERS]


def merge(tree: dict, part: dict) -> dict:
  """`tree` with the entries of `part` (a group's share of it) put in, the adapters' one by one."""
  out = {**tree, **{k: v for k, v in part.items() if k != ADAPTERS}}
  if part.get(ADAPTERS):
    out[ADAPTERS] = {**tree.get(ADAPTERS, {}), **part[ADAPTERS]}
  return out


def group_share(tree: dict, adapters: StageAdapters, first: int) -> dict:
  """The entries of `tree` of the adapter that the group starting at `first` trains, as
  {ADAPTERS: ...} (or {})."""
  names = [n for n in adapters.names_of_group(first) if n in tree.get(ADAPTERS, {})]
  return {ADAPTERS: {n: tree[ADAPTERS][n] for n in names}} if names else {}


def fill_unused(grads: dict, params: dict) -> dict:
  """`grads` with zeros for the adapters no group of the partition used (Progressive DnD's later
  phases leave some unused): the optimiser takes a gradient of the parameters' structure."""
  if ADAPTERS not in params:
    return grads
  used = grads.get(ADAPTERS, {})
  return {**grads, ADAPTERS: {n: used[n] if n in used else jax.tree.map(jnp.zeros_like, p)
                              for n, p in params[ADAPTERS].items()}}
