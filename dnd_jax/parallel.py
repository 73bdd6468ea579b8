"""Data parallelism with `jax.jit` over a one-axis device mesh.

The batch is split over the mesh's "data" axis and everything else (parameters, optimiser state,
the uint8 data set) is replicated. The step is written for the global batch, so BatchNorm's batch
statistics are global across devices with no extra code (PyTorch DDP keeps them per device unless
SyncBatchNorm is used). This is what `jax.pmap` did, without per-device code.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  devices = jax.devices()[: num_devices or jax.device_count()]
  return jax.sharding.Mesh(devices, ("data",))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_divides(batch_size: int, mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"config.{what}={batch_size} does not divide over the {n} devices of the mesh; use a "
        f"multiple of {n} (and scale the learning rate with it, see the README).")
