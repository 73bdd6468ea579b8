"""Augmentation and normalisation in JAX, run inside the jitted training step.

Batches stay uint8 on the host and on the way to the device (a quarter of float32's bytes); every
random choice is drawn per example from one key, so a step is deterministic given its key and
needs no host-side input pipeline.

Training, by the config:
  random_resized_crop  a crop of random area (rrc_scale of the image) and aspect ratio (rrc_ratio,
                       log-uniform), resized to image_size x image_size (bilinear, antialiased).
                       Where torchvision retries up to ten draws until the box fits, the box is
                       clipped to the image instead, which keeps the batch vectorised; its offset
                       is continuous, not whole pixels.
  otherwise            when the stored images are not image_size (Imagewoof with the crop off),
                       they are resized to it; then a random crop of the image padded with
                       `crop_padding` zeros on each side (torchvision's RandomCrop(padding=p)).
  flip                 a horizontal flip with probability 1/2.
Evaluation resizes the stored image to image_size when they differ (Imagewoof: the whole 160 px
square to 128, the same view as a crop of scale 1), and does nothing else.
Both end with x / 255, then (x - mean) / std per channel.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def output_size(data_config: Any, stored_hw: tuple[int, int]) -> tuple[int, int]:
  """(H, W) the model sees: image_size when set, else the stored images' size."""
  size = data_config.get("image_size")
  return (int(size), int(size)) if size else tuple(stored_hw)


def normalise(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  mean = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, -1) * 255.0
  std = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, -1) * 255.0
  return (images.astype(jnp.float32) - mean) / std


def resize(images: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear, antialiased resize of a float batch; a no-op when the size already matches."""
  if images.shape[1:3] == tuple(hw):
    return images
  return jax.image.resize(images, (images.shape[0], *hw, images.shape[3]), "linear",
                          antialias=True)


def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
  """Per example, a window of the input's size from the input padded with `padding` zeros."""
  if padding <= 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
  return jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))(
      padded, offsets)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_resized_crop(images: jax.Array, key: jax.Array, hw: tuple[int, int],
                        scale: Sequence[float], ratio: Sequence[float]) -> jax.Array:
  """Per example, a box of random area and aspect ratio, resized to `hw`."""
  b, h, w, c = images.shape
  k_area, k_ratio, k_x, k_y = jax.random.split(key, 4)
  area = h * w * jax.random.uniform(k_area, (b,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (b,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  box_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  box_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  x0 = jax.random.uniform(k_x, (b,)) * (w - box_w)
  y0 = jax.random.uniform(k_y, (b,)) * (h - box_h)
  out_h, out_w = hw

  def crop(image, y0, x0, box_h, box_w):
    # Maps the box [y0, y0 + box_h] x [x0, x0 + box_w] (pixel-edge coordinates) onto the output.
    scale_yx = jnp.stack([out_h / box_h, out_w / box_w])
    return jax.image.scale_and_translate(image, (out_h, out_w, c), (0, 1), scale_yx,
                                         -jnp.stack([y0, x0]) * scale_yx, "linear", antialias=True)

  return jax.vmap(crop)(images, y0, x0, box_h, box_w)


def train_preprocess(images_u8: jax.Array, key: jax.Array, data_config: Any,
                     mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (B, H, W, C) -> augmented, normalised float32 (B, H', W', C); see the module doc."""
  k_crop, k_flip = jax.random.split(key)
  images = images_u8.astype(jnp.float32)
  hw = output_size(data_config, images.shape[1:3])
  if data_config.get("random_resized_crop", False):
    images = random_resized_crop(images, k_crop, hw, data_config.rrc_scale, data_config.rrc_ratio)
  else:
    images = random_crop(resize(images, hw), k_crop, int(data_config.get("crop_padding", 0)))
  if data_config.get("flip", False):
    images = random_flip(images, k_flip)
  return normalise(images, mean, std)


def eval_preprocess(images_u8: jax.Array, data_config: Any, mean: Sequence[float],
                    std: Sequence[float]) -> jax.Array:
  """uint8 (B, H, W, C) -> normalised float32 at the model's input size; no randomness."""
  images = images_u8.astype(jnp.float32)
  return normalise(resize(images, output_size(data_config, images.shape[1:3])), mean, std)
