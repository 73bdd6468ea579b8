"""Exact conversion between PyTorch weights and dnd_jax variables: torchvision-layout ResNet18/34,
and every network of `dnd_jax.models.ARCHS` in the layout of its published PyTorch definition.

Users bring teachers trained in PyTorch and take their students back to PyTorch (docs/design.md section 5:
"export the student alone; import PyTorch weights exactly"). The two layouts hold the same numbers:

  torchvision                              dnd_jax (`dnd_jax.models.ResNet`)
  conv1 / bn1                              stage1/stem_conv / stage1/stem_bn
  layer{k}.{i}.conv1|bn1|conv2|bn2         stage{k}/block{i}/conv1|bn1|conv2|bn2
  layer{k}.{i}.downsample.0 | .1           stage{k}/block{i}/downsample_conv | downsample_bn
  fc                                       stage5/fc

Convolution kernels are OIHW in PyTorch and HWIO in Flax; linear weights are (out, in) in PyTorch
and (in, out) in Flax; BatchNorm's weight/bias/running_mean/running_var/num_batches_tracked are
Flax's scale/bias (params) and mean/var/num_batches_tracked (batch_stats: `models.BatchNorm` keeps
PyTorch's statistics, the unbiased running variance and the batch counter). A state_dict without
`num_batches_tracked` (PyTorch before 0.4.1) imports with the counter at 0, as PyTorch loads it.
The models pad as PyTorch does, so converted weights give the same features.

Every mismatch (a missing or unexpected key, a wrong shape, a ResNet18 checkpoint where a
ResNet34 is configured, the other stem) is an error that names the key and both shapes: a teacher
that loads silently wrong would spoil every student trained from it.

The other families (the CIFAR-100 distillation benchmark's networks, whose published teachers
are RepDistiller's and mdistiller's `{"model": state_dict, ...}` files) go through one generic
converter, `model_state_dict_to_variables` / `model_variables_to_state_dict`: it reads the layout
off the Flax variables tree (an abstract `init`) and each family's `torch_name(module_path)`, the
PyTorch module name of a Flax module, which the family module defines; the leaf names (kernel ->
weight, scale -> weight, mean -> running_mean, ...) and the transpositions are the same for every
family (grouped and depthwise kernels included: HWIO with I the input channels per group is OIHW
transposed). Its errors name the key and both shapes as the ResNet path's do.

torch is imported lazily and only here in the package, so training never needs it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax import checkpoints, workdir as run_folder
from dnd_jax.data import sources
from dnd_jax.models import BATCH_COUNTER, STAGE_SIZES, STEMS, ResNet
from dnd_jax.teacher import architecture_to_build

STEM_KERNEL = {"cifar": 3, "imagenet": 7}
# Where a training script may have put the state_dict inside a saved checkpoint dict.
STATE_DICT_ENTRIES = ("state_dict", "model_state_dict", "model")
# Known data sets' (num_classes, channels), used when the data config does not state them.
# ImageNet's: ImageNet-1k, as torchvision's published weights are (a streamed folder of another
# class count is checked against the teacher's when the run starts).
DATASET_FACTS = {"cifar100": (100, 3), "imagewoof": (10, 3), "fashion_mnist": (10, 1),
                 "imagenet": (1000, 3)}
_MAX_LISTED = 12


class TorchBridgeError(checkpoints.CheckpointError):
  """PyTorch weights that do not fit the configured ResNet (or are not ResNet weights at all)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor of the torchvision layout and where it lives in the Flax variables."""

  torch_key: str
  collection: str        # "params" or "batch_stats"
  flax_path: tuple[str, ...]
  torch_shape: tuple[int, ...]
  kind: str              # conv, linear_weight, vector, counter


def _conv_entries(torch_prefix: str, flax_path: tuple[str, ...], out_ch: int, in_ch: int,
                  k: int) -> list[Entry]:
  return [Entry(f"{torch_prefix}.weight", "params", (*flax_path, "kernel"), (out_ch, in_ch, k, k),
                "conv")]


def _bn_entries(torch_prefix: str, flax_path: tuple[str, ...], ch: int) -> list[Entry]:
  return [
      Entry(f"{torch_prefix}.weight", "params", (*flax_path, "scale"), (ch,), "vector"),
      Entry(f"{torch_prefix}.bias", "params", (*flax_path, "bias"), (ch,), "vector"),
      Entry(f"{torch_prefix}.running_mean", "batch_stats", (*flax_path, "mean"), (ch,), "vector"),
      Entry(f"{torch_prefix}.running_var", "batch_stats", (*flax_path, "var"), (ch,), "vector"),
      Entry(f"{torch_prefix}.num_batches_tracked", "batch_stats", (*flax_path, BATCH_COUNTER), (),
            "counter"),
  ]


def layout(depth: int, stem: str, width: int, num_classes: int, in_channels: int) -> list[Entry]:
  """Every tensor of a torchvision ResNet of this architecture, in torchvision's order."""
  if depth not in STAGE_SIZES:
    raise TorchBridgeError(f"ResNet depth {depth} is not supported; use one of {sorted(STAGE_SIZES)}.")
  if stem not in STEMS:
    raise TorchBridgeError(f"Unknown stem {stem!r}; use one of {STEMS}.")
  entries = _conv_entries("conv1", ("stage1", "stem_conv"), width, in_channels, STEM_KERNEL[stem])
  entries += _bn_entries("bn1", ("stage1", "stem_bn"), width)
  inplanes = width
  for k, num_blocks in enumerate(STAGE_SIZES[depth], start=1):
    planes = width * 2 ** (k - 1)
    for i in range(num_blocks):
      t, f = f"layer{k}.{i}", (f"stage{k}", f"block{i}")
      entries += _conv_entries(f"{t}.conv1", (*f, "conv1"), planes, inplanes, 3)
      entries += _bn_entries(f"{t}.bn1", (*f, "bn1"), planes)
      entries += _conv_entries(f"{t}.conv2", (*f, "conv2"), planes, planes, 3)
      entries += _bn_entries(f"{t}.bn2", (*f, "bn2"), planes)
      if i == 0 and (k > 1 or inplanes != planes):
        entries += _conv_entries(f"{t}.downsample.0", (*f, "downsample_conv"), planes, inplanes, 1)
        entries += _bn_entries(f"{t}.downsample.1", (*f, "downsample_bn"), planes)
      inplanes = planes
  head = f"stage{ResNet.num_stages}"
  entries.append(Entry("fc.weight", "params", (head, "fc", "kernel"), (num_classes, inplanes),
                       "linear_weight"))
  entries.append(Entry("fc.bias", "params", (head, "fc", "bias"), (num_classes,), "vector"))
  return entries


# --- reading PyTorch checkpoints ------------------------------------------------------------------


def load_torch_checkpoint(path: str) -> dict[str, Any]:
  """A state_dict from a `torch.save` file, read safely (`weights_only=True`) onto the CPU."""
  import torch  # noqa: PLC0415 (lazy: training never imports torch)

  if not os.path.isfile(path):
    raise TorchBridgeError(f"PyTorch checkpoint {path!r} not found.")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises pickle, runtime and zip errors for unreadable files
    raise TorchBridgeError(
        f"Could not read {path!r} with torch.load(weights_only=True): {e}. Save the weights with "
        "`torch.save(model.state_dict(), path)` (a pickled nn.Module is not accepted, because "
        "loading it would run arbitrary code).") from e
  return unwrap_state_dict(obj)


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
  """The state_dict itself, from a raw state_dict or a training checkpoint that holds one, with
  DataParallel/DistributedDataParallel's "module." prefix removed."""
  if not isinstance(obj, Mapping):
    raise TorchBridgeError(
        f"Expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}.")
  for name in STATE_DICT_ENTRIES:
    inner = obj.get(name)
    if isinstance(inner, Mapping) and "conv1.weight" not in obj:
      return unwrap_state_dict(inner)
  state_dict = {}
  for key, value in obj.items():
    if not isinstance(key, str):
      raise TorchBridgeError(f"State_dict key {key!r} is not a string.")
    state_dict[key[len("module."):] if key.startswith("module.") else key] = value
  return state_dict


def _shape(value: Any) -> tuple[int, ...] | None:
  return tuple(int(d) for d in value.shape) if hasattr(value, "shape") else None


def _what(value: Any) -> str:
  """"with shape (3, 5)", or what the value is when it is not a tensor (a nested dict, an int)."""
  shape = _shape(value)
  return f"with shape {shape}" if shape is not None else f"({type(value).__name__}, not a tensor)"


def _to_numpy(key: str, value: Any) -> np.ndarray:
  """A float32 numpy copy of a tensor or array (half-precision checkpoints are widened)."""
  if hasattr(value, "detach"):  # a torch.Tensor; checked by duck type so torch stays lazy
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype.itemsize < 4:
      value = value.float()
    value = value.numpy()
  value = np.asarray(value)
  if not np.issubdtype(value.dtype, np.floating):
    raise TorchBridgeError(f"Key {key!r} has dtype {value.dtype}; expected floating point weights.")
  return value.astype(np.float32, copy=False)


def _counter_to_numpy(key: str, value: Any) -> np.ndarray:
  """num_batches_tracked (a torch.long scalar) as the int32 scalar the Flax statistics hold."""
  value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
  if not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value) <= np.iinfo(np.int32).max:
    raise TorchBridgeError(f"Key {key!r} holds {value!r}; expected a batch count (an integer "
                           f"from 0 to {np.iinfo(np.int32).max}).")
  return np.array(value, dtype=np.int32)


_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def infer_architecture(state_dict: Mapping[str, Any]) -> dict:
  """What the tensors' names and shapes say the network is; values that cannot be told are None.

  depth: from the number of blocks in layer1..layer4; stem: from conv1's kernel size; width and
  in_channels: from conv1; num_classes: from fc.
  """
  counts = [0, 0, 0, 0]
  for key in state_dict:
    m = _BLOCK_KEY.match(key)
    if m:
      k, i = int(m.group(1)), int(m.group(2))
      counts[k - 1] = max(counts[k - 1], i + 1)
  depth = next((d for d, sizes in STAGE_SIZES.items() if tuple(counts) == sizes), None)
  conv1, fc = _shape(state_dict.get("conv1.weight")), _shape(state_dict.get("fc.weight"))
  stem = width = in_channels = num_classes = None
  if conv1 is not None and len(conv1) == 4:
    width, in_channels = conv1[0], conv1[1]
    stem = next((s for s, k in STEM_KERNEL.items() if conv1[2:] == (k, k)), None)
  if fc is not None and len(fc) == 2:
    num_classes = fc[0]
  return {"depth": depth, "blocks_per_layer": tuple(counts), "stem": stem, "width": width,
          "in_channels": in_channels, "num_classes": num_classes}


def _describe(inferred: dict) -> str:
  depth = (f"ResNet{inferred['depth']}" if inferred["depth"] else
           f"a network with {inferred['blocks_per_layer']} blocks in layer1..layer4 (not ResNet18 "
           f"{STAGE_SIZES[18]} or ResNet34 {STAGE_SIZES[34]})")
  stem = {"cifar": "the CIFAR stem (3x3 conv1, no max-pool)",
          "imagenet": "the ImageNet stem (7x7/2 conv1 + max-pool)"}.get(inferred["stem"],
                                                                         "an unknown stem")
  return (f"{depth} with {stem}, width {inferred['width']}, {inferred['in_channels']} input "
          f"channels, {inferred['num_classes']} classes")


def _raise_problems(problems: list[list[str]], hints: list[str], what: str) -> None:
  """One error listing each kind of problem (cut short past a few of each kind), then hints."""
  lines = []
  for kind in problems:
    lines += kind[:_MAX_LISTED // 2]
    if len(kind) > _MAX_LISTED // 2:
      lines.append(f"... and {len(kind) - _MAX_LISTED // 2} more like these")
  raise TorchBridgeError(f"{what}:\n  " + "\n  ".join(lines) + "".join(f"\n{h}" for h in hints))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def torch_state_dict_to_variables(state_dict: Mapping[str, Any], depth: int | None = None,
                                  stem: str | None = None, *, width: int | None = None,
                                  num_classes: int | None = None,
                                  in_channels: int | None = None) -> dict:
  """Flax variables {"params", "batch_stats"} (float32 numpy arrays) of a torchvision ResNet.

  `state_dict` may also be a checkpoint dict holding one (see `unwrap_state_dict`). Every
  architecture argument left as None is read off the tensors; every one given is checked.
  """
  state_dict = unwrap_state_dict(state_dict)
  inferred = infer_architecture(state_dict)
  arch = {"depth": depth, "stem": stem, "width": width, "num_classes": num_classes,
          "in_channels": in_channels}
  for name, value in arch.items():
    if value is None:
      if inferred[name] is None:
        raise TorchBridgeError(
            f"Could not tell the {name} of the network from its state_dict (it looks like "
            f"{_describe(inferred)}); is it a torchvision-layout ResNet18/34? Keys: "
            f"{sorted(state_dict)[:_MAX_LISTED]}")
      arch[name] = inferred[name]
  entries = layout(arch["depth"], arch["stem"], arch["width"], arch["num_classes"],
                   arch["in_channels"])

  wrong, missing, unexpected = _state_dict_problems(entries, state_dict)
  if missing or unexpected or wrong:
    hints = [f"The state_dict looks like {_describe(inferred)}." if inferred["width"] else
             "The state_dict does not look like a torchvision ResNet.",
             f"Expected ResNet{arch['depth']} with the {arch['stem']} stem, width "
             f"{arch['width']}, {arch['in_channels']} input channels, "
             f"{arch['num_classes']} classes (torchvision layout)."]
    if "conv1.weight" not in state_dict:
      hints.append(f"There is no 'conv1.weight' at the top level (keys: "
                   f"{sorted(state_dict)[:_MAX_LISTED]}): if the file holds the weights under "
                   f"another name than {STATE_DICT_ENTRIES}, save `model.state_dict()` itself.")
    _raise_problems([wrong, missing, unexpected], hints,
                    "The PyTorch weights do not fit the configured ResNet")
  return _variables_from_state_dict(entries, state_dict)


def _state_dict_problems(entries: list[Entry], state_dict: Mapping[str, Any]
                         ) -> tuple[list[str], list[str], list[str]]:
  """(wrong shapes, missing keys, unexpected keys) of a state_dict against a layout, each line
  naming the key and the shapes. A missing batch counter is no problem (PyTorch < 0.4.1)."""
  expected = {e.torch_key for e in entries}
  missing = [f"missing key {e.torch_key!r} (expected shape {e.torch_shape})" for e in entries
             if e.kind != "counter" and e.torch_key not in state_dict]
  unexpected = [f"unexpected key {k!r} {_what(v)}" for k, v in state_dict.items()
                if k not in expected]
  wrong = [f"key {e.torch_key!r}: checkpoint shape {_shape(state_dict[e.torch_key])} vs "
           f"expected shape {e.torch_shape}" for e in entries if e.torch_key in state_dict
           and _shape(state_dict[e.torch_key]) != e.torch_shape]
  return wrong, missing, unexpected


def _variables_from_state_dict(entries: list[Entry], state_dict: Mapping[str, Any]) -> dict:
  """Flax variables (float32 numpy arrays, int32 counters) of a checked state_dict."""
  variables: dict = {"params": {}, "batch_stats": {}}
  for e in entries:
    if e.kind == "counter":
      _set(variables[e.collection], e.flax_path,
           _counter_to_numpy(e.torch_key, state_dict.get(e.torch_key, 0)))
      continue
    value = _to_numpy(e.torch_key, state_dict[e.torch_key])
    if e.kind == "conv":
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))   # OIHW -> HWIO
    elif e.kind == "linear_weight":
      value = np.ascontiguousarray(value.T)                       # (out, in) -> (in, out)
    else:
      value = np.array(value, copy=True)
    _set(variables[e.collection], e.flax_path, value)
  return variables


# --- writing PyTorch state_dicts ------------------------------------------------------------------


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _leaves(value, (*prefix, name))
    else:
      yield (*prefix, name), value


def variables_architecture(variables: Mapping) -> dict:
  """depth, stem, width, num_classes and in_channels of dnd_jax ResNet variables."""
  params = variables.get("params")
  try:
    stem_kernel = params["stage1"]["stem_conv"]["kernel"]
    fc_kernel = params[f"stage{ResNet.num_stages}"]["fc"]["kernel"]
  except (KeyError, TypeError) as e:
    raise TorchBridgeError(
        f"These are not dnd_jax ResNet variables (no params/stage1/stem_conv/kernel or "
        f"params/stage{ResNet.num_stages}/fc/kernel: {e!r}).") from e
  counts = tuple(sum(1 for name in params.get(f"stage{k}", {}) if name.startswith("block"))
                 for k in range(1, ResNet.num_stages))
  depth = next((d for d, sizes in STAGE_SIZES.items() if counts == sizes), None)
  if depth is None:
    raise TorchBridgeError(f"The variables have {counts} blocks in stages 1-4, which is neither "
                           f"ResNet18 {STAGE_SIZES[18]} nor ResNet34 {STAGE_SIZES[34]}.")
  kh = int(stem_kernel.shape[0])
  stem = next((s for s, k in STEM_KERNEL.items() if k == kh), None)
  if stem is None:
    raise TorchBridgeError(f"params/stage1/stem_conv/kernel has shape {_shape(stem_kernel)}; a "
                           f"{kh}x{kh} stem is neither the CIFAR (3x3) nor the ImageNet (7x7) one.")
  return {"depth": depth, "width": int(stem_kernel.shape[-1]), "stem": stem,
          "num_classes": int(fc_kernel.shape[-1]), "in_channels": int(stem_kernel.shape[2])}


def variables_to_torch_state_dict(variables: Mapping) -> dict:
  """A torchvision-layout state_dict (torch.Tensor values, float32) of dnd_jax ResNet variables.

  It has every key of `torchvision.models.resnet18/34` (num_batches_tracked included; 0 where the
  variables predate the counter), so
  `load_state_dict(..., strict=True)` accepts it once the model's stem, input channels and
  classifier match (see docs/torch_bridge.md).
  """
  arch = variables_architecture(variables)
  entries = layout(arch["depth"], arch["stem"], arch["width"], arch["num_classes"],
                   arch["in_channels"])
  found = _found_variables(variables)
  wrong, missing, unexpected = _variables_problems(entries, found)
  if missing or unexpected or wrong:
    _raise_problems([wrong, missing, unexpected], [f"Expected the variables of {arch}."],
                    "The variables are not a complete dnd_jax ResNet")
  return _state_dict_from_variables(entries, found)


def _found_variables(variables: Mapping) -> dict[tuple[str, tuple[str, ...]], Any]:
  """(collection, path) -> leaf, for the params and batch_stats of a variables tree."""
  trees = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
  return {(c, path): value for c, tree in trees.items() for path, value in _leaves(tree)}


def _flax_shape(e: Entry) -> tuple[int, ...]:
  """The shape the Flax variable of a layout entry has."""
  want = e.torch_shape
  if e.kind == "conv":
    return (want[2], want[3], want[1], want[0])
  if e.kind == "linear_weight":
    return want[::-1]
  return want


def _variables_problems(entries: list[Entry], found: Mapping
                        ) -> tuple[list[str], list[str], list[str]]:
  """(wrong shapes, missing variables, unexpected variables) of variables against a layout."""
  expected = {(e.collection, e.flax_path): e for e in entries}
  missing = [f"missing variable {'/'.join((c, *p))!r} (for {e.torch_key!r})"
             for (c, p), e in expected.items() if (c, p) not in found and e.kind != "counter"]
  unexpected = [f"unexpected variable {'/'.join((c, *p))!r} {_what(v)}"
                for (c, p), v in found.items() if (c, p) not in expected]
  wrong = [f"variable {'/'.join((c, *p))!r} (for {e.torch_key!r}): shape "
           f"{_shape(found[(c, p)])} vs expected {_flax_shape(e)}"
           for (c, p), e in expected.items()
           if (c, p) in found and _shape(found[(c, p)]) != _flax_shape(e)]
  return wrong, missing, unexpected


def _state_dict_from_variables(entries: list[Entry], found: Mapping) -> dict:
  """A state_dict (torch.Tensor values, float32; long batch counters, 0 where the variables
  predate them) in the layout's order, of checked variables."""
  import torch  # noqa: PLC0415 (lazy: training never imports torch)

  state_dict = {}
  for e in entries:
    if e.kind == "counter":
      count = found.get((e.collection, e.flax_path), 0)
      state_dict[e.torch_key] = torch.tensor(int(np.asarray(count)), dtype=torch.long)
      continue
    value = np.asarray(found[(e.collection, e.flax_path)], dtype=np.float32)
    if e.kind == "conv":
      value = value.transpose(3, 2, 0, 1)   # HWIO -> OIHW
    elif e.kind == "linear_weight":
      value = value.T                       # (in, out) -> (out, in)
    state_dict[e.torch_key] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
  return state_dict


# --- any registered network (dnd_jax.models.ARCHS): the layout read off the Flax variables -------

# Flax leaf -> PyTorch tensor name: nn.Conv's and nn.Dense's kernel and bias, models.BatchNorm's
# scale, bias and statistics. The order is PyTorch's within a module (weight, bias, buffers).
TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var", BATCH_COUNTER: BATCH_COUNTER}
_LEAF_ORDER = {name: i for i, name in enumerate(TORCH_LEAF)}


def _entry(model, collection: str, path: tuple[str, ...], shape: tuple[int, ...]) -> Entry:
  """The layout entry of one Flax variable: its PyTorch key (the family's module name and the
  leaf's) and PyTorch shape."""
  module, leaf = path[:-1], path[-1]
  if leaf not in TORCH_LEAF:
    raise TorchBridgeError(f"Variable {'/'.join((collection, *path))!r} has no PyTorch "
                           f"counterpart (known leaves: {sorted(TORCH_LEAF)}).")
  key = f"{model.torch_name(module)}.{TORCH_LEAF[leaf]}"
  if leaf == BATCH_COUNTER:
    return Entry(key, collection, path, shape, "counter")
  if leaf == "kernel" and len(shape) == 4:     # HWIO (I: input channels per group) -> OIHW
    return Entry(key, collection, path, (shape[3], shape[2], shape[0], shape[1]), "conv")
  if leaf == "kernel" and len(shape) == 2:     # (in, out) -> (out, in)
    return Entry(key, collection, path, (shape[1], shape[0]), "linear_weight")
  return Entry(key, collection, path, shape, "vector")


def model_layout(model, in_channels: int = 3) -> list[Entry]:
  """Every tensor of `model`'s PyTorch state_dict, module by module in the order of the forward
  pass (PyTorch's own order where the definition registers modules in the order it calls them,
  as the families' do), for images with `in_channels` channels.

  Driven by the variables tree that `model.init` makes (found by abstract evaluation, nothing is
  computed) and the family's `model.torch_name(module_path)`, so that a family defines its
  PyTorch names in one place (its own module) and this converter knows no family. The variables'
  shapes do not depend on the image size (every head pools globally).
  """
  if not hasattr(model, "torch_name"):
    raise TorchBridgeError(f"{type(model).__name__} defines no torch_name: it has no PyTorch "
                           "layout to convert to or from.")
  calls: dict[tuple[str, ...], int] = {}

  def record(next_fun, args, kwargs, context):
    calls.setdefault(tuple(context.module.path), len(calls))
    return next_fun(*args, **kwargs)

  image = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  with nn.intercept_methods(record):   # the modules' first calls: the forward pass's order
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
  modules: dict[tuple[str, ...], list[tuple[str, tuple[str, ...], tuple[int, ...]]]] = {}
  for collection in ("params", "batch_stats"):   # pytrees sort their keys: the order is lost
    for path, leaf in _leaves(abstract.get(collection, {})):
      modules.setdefault(path[:-1], []).append((collection, path, tuple(leaf.shape)))
  entries = [_entry(model, c, path, shape)
             for module in sorted(modules, key=lambda m: calls.get(m, len(calls)))
             for c, path, shape in sorted(modules[module],
                                          key=lambda v: _LEAF_ORDER.get(v[1][-1], 0))]
  seen: dict[str, Entry] = {}
  for e in entries:
    if e.torch_key in seen:
      raise TorchBridgeError(
          f"{type(model).__name__}.torch_name gives {e.torch_key!r} to both "
          f"{'/'.join(seen[e.torch_key].flax_path)} and {'/'.join(e.flax_path)}.")
    seen[e.torch_key] = e
  return entries


def _first_conv(entries: list[Entry]) -> Entry:
  """The first convolution: the tensor whose shape tells the image's channels."""
  return next(e for e in entries if e.kind == "conv")


def model_state_dict_to_variables(model, state_dict: Mapping[str, Any],
                                  in_channels: int | None = None) -> dict:
  """Flax variables {"params", "batch_stats"} (float32 numpy arrays) of `model` (any network of
  `dnd_jax.models.ARCHS`) from its PyTorch state_dict, with every key and shape checked.

  `state_dict` may also be a checkpoint dict holding one (RepDistiller's and mdistiller's
  `{"model": state_dict, "epoch": ..., ...}`; see `unwrap_state_dict`). `in_channels` None reads
  the input channels off the first convolution's weight.
  """
  state_dict = unwrap_state_dict(state_dict)
  entries = model_layout(model, 3 if in_channels is None else in_channels)
  stem = _shape(state_dict.get(_first_conv(entries).torch_key))
  if in_channels is None and stem is not None and len(stem) == 4 and stem[1] != 3:   # OIHW
    entries = model_layout(model, stem[1])
  wrong, missing, unexpected = _state_dict_problems(entries, state_dict)
  if missing or unexpected or wrong:
    hints = [f"Expected the state_dict of {_model_repr(model)} (PyTorch names: "
             f"{_first_keys(entries)}, ...)."]
    if state_dict and all(k.startswith(("student.", "teacher.")) for k in state_dict):
      hints.append("Its keys start with 'student.' and 'teacher.': a whole mdistiller distiller "
                   "(its best/latest files); its student_best or student_latest file holds the "
                   "student alone, and a teacher is the file it was loaded from.")
    _raise_problems([wrong, missing, unexpected], hints,
                    f"The PyTorch weights do not fit {type(model).__name__}")
  return _variables_from_state_dict(entries, state_dict)


def model_variables_to_state_dict(model, variables: Mapping) -> dict:
  """The PyTorch state_dict (torch.Tensor values, float32; long batch counters) of `model`'s
  variables, which its PyTorch definition loads with `load_state_dict(..., strict=True)`."""
  found = _found_variables(variables)
  entries = model_layout(model)
  stem = _first_conv(entries)
  kernel = _shape(found.get((stem.collection, stem.flax_path)))
  if kernel is not None and len(kernel) == 4 and kernel[2] != 3:   # HWIO: I is the image's
    entries = model_layout(model, kernel[2])
  wrong, missing, unexpected = _variables_problems(entries, found)
  if missing or unexpected or wrong:
    _raise_problems([wrong, missing, unexpected],
                    [f"Expected the variables of {_model_repr(model)}."],
                    f"The variables are not a complete {type(model).__name__}")
  return _state_dict_from_variables(entries, found)


def _model_repr(model) -> str:
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ("parent", "name", "dtype")}
  return f"{type(model).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def _first_keys(entries: list[Entry], n: int = 4) -> str:
  return ", ".join(repr(e.torch_key) for e in entries[:n])


# --- the jobs behind scripts/import_torch_teacher.py and scripts/export_torch_student.py ---------


def dataset_facts(data_config) -> tuple[int, int]:
  """(num_classes, channels) of the config's data set, without loading the data.

  The class count is the data reader's; the channel count is that of the configured
  normalisation (one mean per channel), or the data set's known one when the mean is computed.
  """
  name = data_config.get("name")
  try:
    num_classes = sources.READERS[name].NUM_CLASSES
  except (AttributeError, KeyError):
    num_classes = DATASET_FACTS.get(name, (None, None))[0]
  mean = data_config.get("mean")
  channels = len(mean) if mean else DATASET_FACTS.get(name, (None, None))[1]
  if num_classes is None or channels is None:
    raise TorchBridgeError(
        f"Unknown data set {name!r}: cannot tell its number of classes and channels (known: "
        f"{sorted(DATASET_FACTS)}).")
  return int(num_classes), int(channels)


def import_teacher(checkpoint: str, config, output: str | None = None,
                   overwrite: bool = False) -> tuple[str, dict]:
  """Convert a PyTorch teacher for `config` and save it where the config loads its teacher.

  The weights must be the teacher network (`teacher.architecture_to_build`: config.teacher's
  depth, width and stem where set, else a trained teacher's: the student's width and stem, the
  depth of config.teacher.config's model block) for the config's
  data set (classes, channels). Writes `output` or else `config.teacher.checkpoint`; returns the
  path and the architecture written. A folder that holds a model already is refused (students
  may have distilled from it) unless `overwrite`, and a trained run's model always is.
  """
  path = output or config.teacher.checkpoint
  if not path:
    raise TorchBridgeError("No output folder: pass --output or set config.teacher.checkpoint.")
  run = run_folder.workdir_of_model(path)
  if run is not None and run_folder.has_progress(run):
    raise TorchBridgeError(
        f"{path} is the model of the training run in {run}, which the import would replace. "
        "Give --output <a new folder> (or another --config.teacher.checkpoint).")
  if run_folder.has_model(path) and not overwrite:
    raise TorchBridgeError(
        f"{path} holds a model already, which students may have distilled from. Give --output "
        "<a new folder>, or --overwrite to replace it.")

  num_classes, channels = dataset_facts(config.data)
  state_dict = load_torch_checkpoint(checkpoint)
  wanted = architecture_to_build(config)
  arch = checkpoints.architecture(wanted, num_classes, (channels,))
  if arch.get("arch"):  # a network of models.ARCHS, in its published definition's layout
    variables = model_state_dict_to_variables(checkpoints.network(arch), state_dict, channels)
  else:
    variables = torch_state_dict_to_variables(
        state_dict, int(wanted.depth), str(wanted.stem),
        width=int(wanted.width), num_classes=num_classes, in_channels=channels)
  checkpoints.save_model(path, variables, arch, {
      "source": "pytorch", "torch_checkpoint": os.path.abspath(checkpoint),
      "dataset": config.data.get("name")})
  return path, arch


def load_exported_variables(workdir: str, best: bool = False) -> tuple[dict, dict]:
  """The variables of `<workdir>/model` (the final model) or of the best-accuracy checkpoint,
  with their architecture."""
  import jax  # noqa: PLC0415

  path = run_folder.model_dir(workdir)
  if best:
    variables, meta, step = checkpoints.read_best_model(workdir)
    variables = jax.device_get(variables)
    # a network of models.ARCHS is told by the run's exported model (its variables do not say)
    final = checkpoints.read_model_meta(path) if run_folder.has_model(path) else {}
    arch = final.get("architecture") or {}
    return variables, {**(arch if arch.get("arch") else variables_architecture(variables)),
                       "step": step, **meta}
  meta = checkpoints.read_model_meta(path)
  arch = meta.get("architecture", {})
  # the variables' shapes do not depend on the image size (the head follows a global pool)
  _, variables, meta = checkpoints.load_model_as(path, arch, (32, 32, arch["in_channels"]))
  return jax.device_get(variables), {**arch, **meta}


def export_student(workdir: str, output: str | None = None, best: bool = False) -> tuple[str, dict]:
  """Write the run's student as a torchvision-layout state_dict file; returns (path, info)."""
  import torch  # noqa: PLC0415

  variables, info = load_exported_variables(workdir, best)
  if info.get("arch"):  # in the layout of the network's published PyTorch definition
    state_dict = model_variables_to_state_dict(checkpoints.network(info), variables)
  else:
    state_dict = variables_to_torch_state_dict(variables)
  path = output or run_folder.torch_student_path(workdir, best)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # through a Python file: an unwritable place is then an OSError (a command's one `error:` line),
  # not the RuntimeError of torch's own file writer
  with open(path + ".tmp", "wb") as f:
    torch.save(state_dict, f)
  os.replace(path + ".tmp", path)
  return path, info
