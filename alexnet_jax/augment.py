"""The device's half of the paper's augmentation (section 4.1) for batches
that cross as uint8 (the prepared store, ``prepared.py``): the reflection,
the PCA colour offset and the mean subtraction (section 2) of training
patches, and the evaluation patches, all in jitted JAX next to the step.
Each keeps the batch's sharding: the rows stay on the devices they crossed
to.

The same constants and conventions as the tf.data pipeline
(``input_pipeline.py``): pixels on a 0..255 scale, the offset
``255 * V (alpha * l)`` with V the eigenvectors (columns) and l the
eigenvalues of the RGB covariance on a 0..1 scale, and the ten patches in
the order corners, centre, then their reflections.

The reflection is here rather than on the host because a reflected copy of
a uint8 patch is slow there: measured on the 2-core machine, 178 us for a
224x224x3 patch against 3 us for a plain copy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import input_pipeline


@functools.partial(jax.jit, static_argnames='pixels')
def train_images(images: jax.Array, flip: jax.Array, pca_alpha: jax.Array,
                 pixels: input_pipeline.Pixels = input_pipeline.PAPER_PIXELS
                 ) -> jax.Array:
  """float32 ``[b, h, w, 3]`` from uint8 patches: each reflected where
  ``flip``, plus its PCA colour offset (``pca_alpha`` ``[b, 3]``, the
  N(0, 0.1) draws), in the ``pixels`` convention (the paper's: minus the
  mean RGB)."""
  rgb = images.astype(jnp.float32)
  rgb = jnp.where(flip[:, None, None, None], rgb[:, :, ::-1], rgb)
  eigvec = np.asarray(input_pipeline.PCA_EIGVEC, np.float32)
  eigval = np.asarray(input_pipeline.PCA_EIGVAL, np.float32)
  offset = 255.0 * (pca_alpha * eigval) @ eigvec.T
  return pixels.apply(rgb, offset[:, None, None, :])


@functools.partial(jax.jit,
                   static_argnames=('crop_size', 'ten_crop', 'pixels'))
def eval_images(images: jax.Array, crop_size: int, ten_crop: bool,
                pixels: input_pipeline.Pixels = input_pipeline.PAPER_PIXELS
                ) -> jax.Array:
  """float32 in the ``pixels`` convention: the centre patches ``[b, crop,
  crop, 3]`` as they are, or with ``ten_crop`` the paper's ten patches
  ``[b, 10, crop, crop, 3]`` of each uint8 square ``[b, side, side, 3]``."""
  inputs = pixels.apply(images.astype(jnp.float32))
  if not ten_crop:
    return inputs
  far = inputs.shape[1] - crop_size
  corners = [(0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)]
  crops = [inputs[:, y:y + crop_size, x:x + crop_size] for y, x in corners]
  crops += [c[:, :, ::-1] for c in crops]
  return jnp.stack(crops, axis=1)
