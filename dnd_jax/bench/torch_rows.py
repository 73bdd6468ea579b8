"""The PyTorch rows: `dnd_jax.torch_reference`'s step of a case, from the same weights and data as
the JAX row, timed with the same loop, so the two frameworks' rows compare like for like.

torch is a test and benchmark extra, so it is imported only when a PyTorch row is asked for.
"""

import math
import os
import time

import jax
import numpy as np

from dnd_jax.bench.harness import (CASES, TOTAL_STEPS, JaxBench, Runner, time_loop,
                                   timing_fields)
from dnd_jax.configs import base_config
from dnd_jax.data import augment, cifar100
from dnd_jax.methods import get_method

# PyTorch modes: --torch value -> (row label, torch.compile mode or None for eager). The CUDA-graph
# mode ("reduce-overhead") is the strongest PyTorch baseline for small steps: it removes the
# per-kernel launch cost that eager and the default compile pay.
TORCH_MODES = {"eager": ("torch eager", None), "compile": ("torch.compile", "default"),
               "cudagraphs": ("torch.compile cudagraphs", "reduce-overhead")}


def torch_supports(case_name: str) -> bool:
  """Whether the PyTorch reference implements this case (plain steps: no memory-lean, no remat)."""
  from dnd_jax import torch_reference as tr  # noqa: PLC0415  (torch: a test/benchmark extra)

  case = CASES[case_name]
  return case.method in tr.METHODS and not (case.memory_lean or case.remat)


def torch_row(bench: JaxBench, case_name: str, batch: int, dtype_name: str, mode: str) -> dict:
  """The PyTorch reference's step, from the same (calibrated) weights as the JAX row."""
  import torch  # noqa: PLC0415

  from dnd_jax import torch_reference as tr  # noqa: PLC0415

  args = bench.args
  case = CASES[case_name]
  label, compile_mode = TORCH_MODES[mode]
  method = get_method(case.method)
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  depth = base_config("cifar100", case.method).model.depth
  student = tr.from_variables(bench.variables(depth)).to(device)
  teacher = (tr.from_variables(bench.variables(args.teacher_depth, teacher=True)).to(device)
             if method.needs_teacher else None)
  step = tr.make_torch_step(case.method, student, teacher, batch, total_steps=TOTAL_STEPS,
                            phase=case.phase, bf16=dtype_name == "bfloat16",
                            compile=compile_mode is not None, compile_mode=compile_mode)
  if not cuda:  # as many threads as this process may use (taskset), like XLA's CPU client
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  # one augmented, normalised batch of the same synthetic data, resident on the device (NCHW)
  rows = np.arange(batch) % args.dataset_size
  x = augment.train_preprocess(bench.images[rows], jax.random.key(0),
                               base_config("cifar100", "kd").data, cifar100.MEAN, cifar100.STD)
  images = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device)
  labels = torch.from_numpy(np.asarray(bench.labels[rows]).astype(np.int64)).to(device)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  loss = step(images, labels)  # the first call compiles under torch.compile
  sync()
  first_s = time.perf_counter() - t0
  runner = Runner(lambda last: step(images, labels), lambda last: sync())
  loss, synced, loop, host = time_loop(runner, loss, max(args.warmup - 1, 0), args.steps)
  loss = float(loss)
  return {
      "framework": label, "case": case_name, "batch": batch, "dtype": dtype_name,
      "steps_per_dispatch": 1, "compile_s": first_s if compile_mode else None,
      **timing_fields(batch, synced, loop, host),
      "peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
      "temp_mib": None, "gflop_per_step": None,
      "mean_loss": loss, "loss_finite": math.isfinite(loss),
  }
