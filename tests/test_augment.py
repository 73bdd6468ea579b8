"""Augmentation inside the jitted step: shapes, determinism, and that each transform is what it
claims to be (a window of the padded image, a mirror image, the Inception crop's size)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnd_jax import data
from dnd_jax.data import augment

IDENTITY = ((0.0,), (1.0 / 255.0,))  # mean 0, std 1/255: the output is the raw pixel value


def images(b=32, h=8, w=8, c=1, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), np.uint8)


def cfg(name="fashion_mnist", **fields):
  c = data.default_data_config(name)
  c.update(fields)
  return c


def jitted_train(config, mean, std):
  return jax.jit(functools.partial(augment.train_preprocess, data_config=config, mean=mean,
                                   std=std))


def test_shapes_dtypes_and_determinism():
  for c, x, shape in ((cfg(), images(), (32, 8, 8, 1)),
                      (cfg("cifar100"), images(c=3), (32, 8, 8, 3)),
                      (cfg("imagewoof", image_size=12), images(h=16, w=16, c=3), (32, 12, 12, 3))):
    train = jitted_train(c, c.mean, c.std)
    a = train(x, jax.random.key(1))
    assert a.shape == shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, train(x, jax.random.key(1)))
    assert not np.array_equal(a, train(x, jax.random.key(2)))
    e = jax.jit(functools.partial(augment.eval_preprocess, data_config=c, mean=c.mean,
                                  std=c.std))(x)
    assert e.shape == shape and e.dtype == jnp.float32


def test_crop_is_a_shifted_window_of_the_padded_image():
  p = 2
  c = cfg(crop_padding=p, flip=False)
  x = images(b=64)
  out = np.asarray(jitted_train(c, *IDENTITY)(x, jax.random.key(0)))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  offsets = []
  for i in range(len(x)):
    matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
               if np.allclose(out[i], padded[i, dy:dy + 8, dx:dx + 8], atol=1e-3)]
    assert matches, f"example {i} is no window of its padded image"
    offsets.append(matches[0])
  assert len(set(offsets)) > 10  # drawn per example, over the whole range
  assert {o[0] for o in offsets} == set(range(2 * p + 1))


def test_flip_flips_about_half():
  c = cfg(crop_padding=0, flip=True)
  x = images(b=64)
  out = np.asarray(jitted_train(c, *IDENTITY)(x, jax.random.key(3)))
  flipped = [np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, x)]
  kept = [np.allclose(o, i, atol=1e-3) for o, i in zip(out, x)]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 16 < sum(flipped) < 48


def test_no_augmentation_is_identity_and_eval_matches():
  c = cfg(crop_padding=0, flip=False)
  x = images()
  np.testing.assert_allclose(jitted_train(c, *IDENTITY)(x, jax.random.key(0)), x, atol=1e-3)
  np.testing.assert_allclose(augment.eval_preprocess(x, c, *IDENTITY), x, atol=1e-3)


def test_normalisation_values():
  c = cfg("cifar100")
  x = np.zeros((2, 4, 4, 3), np.uint8)
  x[..., 0], x[..., 1], x[..., 2] = 0, 128, 255
  out = np.asarray(augment.eval_preprocess(x, c, c.mean, c.std))
  expected = (np.array([0, 128, 255]) / 255.0 - np.array(c.mean)) / np.array(c.std)
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5)
  # Training on a flat image: crops and flips change nothing but the zero padding's border.
  flat = augment.train_preprocess(x, jax.random.key(0), cfg("cifar100", crop_padding=0), c.mean,
                                  c.std)
  np.testing.assert_allclose(flat, np.broadcast_to(expected, out.shape), rtol=1e-5)


def test_random_resized_crop_size_range_and_variety():
  c = cfg("imagewoof", image_size=12, flip=False)
  x = images(b=16, h=20, w=20, c=3)
  out = np.asarray(jitted_train(c, *IDENTITY)(x, jax.random.key(0)))
  assert out.shape == (16, 12, 12, 3)
  assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3  # bilinear weights are convex
  assert len({o.tobytes() for o in out}) == 16


def test_full_box_random_resized_crop_is_a_resize():
  """With scale and ratio fixed at 1 the box is the whole image: the crop is a plain resize."""
  c = cfg("imagewoof", image_size=12, flip=False, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))
  x = images(b=4, h=20, w=20, c=3)
  out = jitted_train(c, *IDENTITY)(x, jax.random.key(0))
  resized = jax.image.resize(x.astype(np.float32), (4, 12, 12, 3), "linear", antialias=True)
  np.testing.assert_allclose(out, resized, atol=1e-3)
  np.testing.assert_allclose(augment.eval_preprocess(x, c, *IDENTITY), resized, atol=1e-3)


def test_small_box_crop_magnifies_one_region():
  """A box of 1/16 of the area shows one quadrant-sized region, so a 2x2 checkerboard of flat
  quadrants mostly yields crops that lie inside one quadrant (one flat colour)."""
  c = cfg("imagewoof", image_size=8, flip=False, rrc_scale=(1 / 16, 1 / 16), rrc_ratio=(1.0, 1.0))
  x = np.zeros((64, 32, 32, 1), np.uint8)
  x[:, :16, :16] = x[:, 16:, 16:] = 200
  out = np.asarray(jitted_train(c, *IDENTITY)(x, jax.random.key(5)))
  flat = [o.max() - o.min() < 1e-3 for o in out]
  assert sum(flat) > 8 and not all(flat)  # boxes (8 px) fall inside a quadrant, or across an edge


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar100", "imagewoof"])
def test_eval_output_matches_image_shape(name):
  c = cfg(name)
  stored = c.stored_size or 32
  x = images(b=2, h=stored, w=stored, c=1 if name == "fashion_mnist" else 3)
  expected = (c.image_size or stored)
  assert augment.eval_preprocess(x, c, c.mean, c.std).shape == (2, expected, expected, x.shape[3])
