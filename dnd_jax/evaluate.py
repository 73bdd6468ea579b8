"""Accuracy of an exported model on a data set's test or validation split.

The model is ours (a folder with `model.json`, e.g. `<workdir>/model` or one written by
scripts/import_torch_teacher.py) or a PyTorch torchvision-layout checkpoint file, converted in
memory by `dnd_jax.torch_bridge` with its architecture read off the tensors. The images go through
the trainer's evaluation preprocessing (`config.data`: size, mean and std from the training split),
so the number equals what a training run with that config would report for the same network. A
streamed data set (`data.loader=stream`, ImageNet) is read through the run's evaluation pipeline,
one pass over its val/ folder, instead of being held whole.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax import checkpoints, steps, torch_bridge
from dnd_jax.data import augment, load_dataset, stream
from dnd_jax.models import ResNet, resolve_dtype
from dnd_jax.teacher import held_out_difference


def load_any_model(path: str, image_shape, dtype=jnp.float32) -> tuple[ResNet, dict, dict, dict]:
  """(model, variables, architecture, model.json) of an exported folder or a PyTorch checkpoint
  file (whose model.json is {}: it records nothing of what it was trained on), computing in
  `dtype` (parameters stay float32) as a training run with that model.dtype evaluates."""
  if os.path.isdir(path):
    arch = checkpoints.read_model_meta(path)["architecture"]
    model, variables, meta = checkpoints.load_model_as(path, arch, image_shape, dtype)
    return model, variables, arch, meta
  if not os.path.isfile(path):
    raise checkpoints.CheckpointError(
        f"No model at {path!r}: give an exported model folder (with {checkpoints.MODEL_META}) or a "
        "PyTorch checkpoint file (.pt/.pth).")
  if os.path.basename(path) == checkpoints.MODEL_META:
    raise checkpoints.CheckpointError(
        f"{path!r} is the record of an exported model: give its folder, "
        f"{os.path.dirname(path) or '.'!r}.")
  variables = torch_bridge.torch_state_dict_to_variables(torch_bridge.load_torch_checkpoint(path))
  arch = torch_bridge.variables_architecture(variables)
  return checkpoints.network(arch, dtype), variables, arch, {}


def evaluate_model(path: str, config, split: str = "test") -> dict:
  """Accuracy, per-class accuracy, the confusion matrix and inference images/s of one model."""
  if split not in ("test", "validation"):
    raise ValueError(f"split={split!r}: use 'test' or 'validation'.")
  streamed = config.data.get("loader", "device") == "stream"
  if split == "validation" and streamed:
    raise ValueError(f"split='validation': a streamed data set ({config.data.name}) holds no "
                     "validation split (its val/ folder is the test split); use --split=test.")
  if split == "validation" and not config.data.get("val_fraction", 0.0):
    raise ValueError("split='validation' needs a held-out split: set "
                     "--config.data.val_fraction (e.g. 0.1) as in the training run.")
  dataset = stream.open_stream(config.data) if streamed else load_dataset(config.data)
  model, variables, arch, meta = load_any_model(path, dataset.image_shape,
                                                resolve_dtype(config.model.get("dtype", "float32")))
  if arch["num_classes"] != dataset.num_classes or arch["in_channels"] != dataset.image_shape[-1]:
    raise checkpoints.CheckpointError(
        f"The model has {arch['num_classes']} classes and {arch['in_channels']} input channels; "
        f"{dataset.name} has {dataset.num_classes} and {dataset.image_shape[-1]}. Pick the config "
        "of the data set the model was trained on.")
  # a model evaluated on other inputs than it was trained on is allowed (robustness, say), but the
  # accuracy is then not the training run's, which the result says
  other_inputs = checkpoints.input_differences(meta, dataset)
  differ = held_out_difference(meta, config.data)
  if split == "validation" and differ is not None:
    held_out, ours = differ  # images it trained on: the accuracy is no held-out figure
    other_inputs.append(
        f"held-out rows val_fraction {held_out.get('val_fraction')}, subset_seed "
        f"{held_out.get('subset_seed')} (this run: {ours['val_fraction']}, "
        f"{ours['subset_seed']}): it trained on some of these validation images")
  predict = _streamed_predictions if streamed else _resident_predictions
  labels, predictions, seconds = predict(model, variables, dataset, config, split)
  n = len(labels)
  k = dataset.num_classes
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {"model": path, "architecture": arch, "dataset": dataset.name, "split": split,
          "images": n, "accuracy": float(confusion.trace() / n),
          "per_class_accuracy": {name: float(a) for name, a in
                                 zip(dataset.class_names or [str(i) for i in range(k)], per_class)},
          "confusion": confusion.tolist(), "images_per_s": n / seconds,
          "trained_on_other_inputs": other_inputs,
          "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def _resident_predictions(model, variables, dataset, config, split: str):
  """(labels, predicted labels, seconds) of the resident split, all of it in one dispatch; the
  seconds those of a second, compiled and warm, pass."""
  images, labels = ((dataset.eval_images, dataset.eval_labels) if split == "validation"
                    else (dataset.test_images, dataset.test_labels))
  n = len(labels)
  batch = steps.resolve_eval_batch_size(int(config.eval_batch_size), n, images.shape[1:], model)

  @jax.jit
  def predict(variables, images_u8, labels):
    def one_batch(xy):
      x = augment.eval_preprocess(xy[0], config.data, dataset.mean, dataset.std)
      return jnp.argmax(model.apply(variables, x), -1)
    return jax.lax.map(one_batch, steps.padded_batches(images_u8, labels, batch)).reshape(-1)

  on_device = jax.device_put((variables, images, labels))
  jax.block_until_ready(predict(*on_device))  # compile and warm up
  t0 = time.perf_counter()
  predictions = np.asarray(jax.block_until_ready(predict(*on_device)))[:n]
  return labels, predictions, time.perf_counter() - t0


def _streamed_predictions(model, variables, data: stream.StreamData, config, split: str):
  """(labels, predicted labels, seconds) of a streamed data set's val/ folder, read once through
  the training run's evaluation pipeline (`stream.eval_batches`: resize and centre crop on the
  host, normalisation on the device). The seconds are the pass's, decoding included (the step is
  compiled first); images that do not decode under `data.skip_corrupt` are left out, as a
  training run's evaluation leaves them out."""
  del split  # the test split: checked by evaluate_model
  batch = steps.resolve_eval_batch_size(int(config.eval_batch_size), data.n_eval,
                                        data.image_shape, model)

  def predict(variables, images_u8):
    x = augment.eval_preprocess(images_u8, config.data, data.mean, data.std)
    return jnp.argmax(model.apply(variables, x), -1)

  variables = jax.device_put(variables)
  compiled = jax.jit(predict).lower(
      variables, jax.ShapeDtypeStruct((batch, *data.image_shape), jnp.uint8)).compile()
  t0 = time.perf_counter()
  labels, predictions = [], []
  for b in stream.eval_batches(data, config.data, batch_size=batch):
    predictions.append(compiled(variables, b["image"]))
    labels.append(b["label"])
  labels, predictions = np.concatenate(labels), np.concatenate(jax.device_get(predictions))
  seconds = time.perf_counter() - t0
  kept = labels >= 0  # the last batch's padding and any skipped image
  return labels[kept], predictions[kept], seconds


def plot_confusion(result: dict, path: str) -> None:
  """The confusion matrix as a PNG (rows: true class, columns: predicted); needs matplotlib."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  names = list(result["per_class_accuracy"])
  confusion = np.asarray(result["confusion"])
  size = max(4.0, 0.35 * len(names))
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(confusion / np.maximum(confusion.sum(1, keepdims=True), 1), cmap="Blues",
                 vmin=0, vmax=1)
  if len(names) <= 20:
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"{result['dataset']} {result['split']}: accuracy {100 * result['accuracy']:.2f}%")
  fig.colorbar(im, ax=ax, label="share of the true class")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
