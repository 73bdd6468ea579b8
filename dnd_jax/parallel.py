"""Data parallelism with `jax.jit` over a one-axis device mesh.

The batch is split over the mesh's "data" axis and everything else (parameters, optimiser state,
and in a single-process run the uint8 data set) is replicated. The step is written for the global
batch, so BatchNorm's batch statistics are global across devices with no extra code (PyTorch DDP
keeps them per device unless SyncBatchNorm is used). This is what `jax.pmap` did, without
per-device code.

Multi-host: `dnd_jax.runtime.setup_runtime` starts `jax.distributed` when the environment asks for
it; the mesh then spans every host's devices, and `put_dataset` lets each host place only its
share of the training set.
"""

from __future__ import annotations

import jax
import numpy as np
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
        f"multiple of {n} (and scale the learning rate with it, see docs/running.md).")


def local_rows(num_rows: int, mesh) -> slice:
  """The rows of a data set sharded over the mesh's "data" axis that this process holds.

  `num_rows` is the padded count (see `put_dataset`). A host's devices are contiguous along a
  mesh made from `jax.devices()` (ordered by process), so its share is one contiguous block.
  """
  sharding = batch_sharded(mesh)
  indices = sharding.addressable_devices_indices_map((num_rows,)).values()
  starts = sorted(index[0].indices(num_rows)[0] for index in indices)
  stops = sorted(index[0].indices(num_rows)[1] for index in indices)
  if any(a != b for a, b in zip(starts[1:], stops[:-1])):
    raise ValueError("This process's devices are not contiguous along the mesh's data axis; "
                     "build the mesh from jax.devices() (parallel.make_mesh) so each host holds "
                     "one block of the data set.")
  return slice(starts[0], stops[-1])


def put_dataset(array, mesh, *, shard: bool | None = None) -> jax.Array:
  """A resident data-set array (images or labels) on the mesh, for the step to gather from.

  Single-process (the default there): the whole array replicated on every device, so a batch is
  gathered locally. Multi-process (or `shard=True`): the rows are split over the "data" axis and
  each host contributes only its own block (`local_rows`) through
  `jax.make_array_from_process_local_data`, so no host places, and no device holds, the whole
  set; the step's gather of a batch from the global array is then a cross-device gather that XLA
  inserts. The rows are padded with zeros to a multiple of the device count; the padding is never
  drawn, because the step's permutation covers only the real rows (keep the real count from the
  host array).
  """
  array = np.asarray(array)
  if shard is None:
    shard = jax.process_count() > 1
  if not shard:
    if jax.process_count() == 1:
      return jax.device_put(array, replicated(mesh))
    return jax.make_array_from_process_local_data(replicated(mesh), array)
  n_dev = mesh.devices.size
  rows = -(-len(array) // n_dev) * n_dev
  block = local_rows(rows, mesh)
  local = array[block.start:min(block.stop, len(array))]
  if len(local) < block.stop - block.start:
    pad = block.stop - block.start - len(local)
    local = np.concatenate([local, np.zeros((pad, *array.shape[1:]), array.dtype)])
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local,
                                                (rows, *array.shape[1:]))
