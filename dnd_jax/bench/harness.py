"""The JAX side of the benchmark: the timed cases, the timing loop, and each case's step built and
timed as the training loop builds and dispatches it.

The steps come from the trainer's own builder (`steps.compile_partition_step`), the models from
`models.build_model` and a pair's stage adapters from `adapters.for_pair` (with the method
resolved for the pair's stage count, as `train` does), so a row times what training runs rather
than a copy of it.
"""

import contextlib
import dataclasses
import logging
import math
import os
import statistics
import time

import flax.linen as nn
import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnd_jax import adapters, freeze, parallel, profiling, runtime, steps
from dnd_jax.configs import base_config
from dnd_jax.data import augment, cifar100
from dnd_jax.methods import get_method
from dnd_jax.models import DTYPES, abstract_variables, build_model, init_variables
from dnd_jax.optim import make_optimizer

log = logging.getLogger(__name__)

# the paper's ResNet34 teacher (--teacher-depth); a student's depth comes from its config
TEACHER_DEPTH = 34
# the networks of a table from before --student-arch / --teacher-arch: the paper's ResNets
NO_ARCHS = {"student_arch": "", "student_arch_kwargs": {}, "teacher_arch": "",
            "teacher_arch_kwargs": {}}


def network_block(args, role: str, depth: int | None = None) -> ml_collections.ConfigDict:
  """The config block (`build_model`'s) of the benchmark's "student" or "teacher": the network
  --<role>-arch names with its family keyword arguments, else the paper's ResNet of `depth` at
  --width."""
  arch = getattr(args, f"{role}_arch", "") or ""
  if arch:
    return ml_collections.ConfigDict(
        {"arch": arch, "arch_kwargs": dict(getattr(args, f"{role}_arch_kwargs", None) or {})})
  return ml_collections.ConfigDict({"depth": depth, "width": args.width, "stem": "cifar"})


@dataclasses.dataclass(frozen=True)
class Case:
  """One timed step: a method of the registry, one of its phases, and the two memory switches
  (`config.method.memory_lean`, `config.model.remat`)."""

  method: str
  phase: int = 0
  memory_lean: bool = False
  remat: bool = False


CASES = {
    "teacher": Case("teacher"),
    "kd": Case("kd"),
    "at": Case("at"),
    "jacobian": Case("jacobian"),
    "dnd": Case("dnd"),
    "dnd_lean": Case("dnd", memory_lean=True),
    "dnd_remat": Case("dnd", remat=True),
    "dnd_lean_remat": Case("dnd", memory_lean=True, remat=True),
    "kd_remat": Case("kd", remat=True),
    "pdnd_p1": Case("pdnd", 0),
    "pdnd_p2": Case("pdnd", 1),
    "pdnd_p3": Case("pdnd", 2),
}
TOTAL_STEPS = 10_000  # only sets the schedules' shape; the timed steps are the first few
CALIBRATION_PASSES = 40


def _median_ms(seconds: list[float]) -> float:
  return 1e3 * statistics.median(seconds)


def _cost_gflop(lowered) -> float | None:
  """XLA's GFLOP count of a lowered (not compiled) program.

  The lowered module is the one to count: after compilation for a GPU, the convolutions are
  cuDNN custom calls that XLA's cost analysis does not count (an H200 run reported 3.6 GFLOP for
  a ResNet step of several hundred), while the lowered module still has them as convolutions.
  """
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
    cost = cost[0] if cost else None
  return float(cost["flops"]) / 1e9 if cost and "flops" in cost else None


def measure_matmul_tflops(n: int, dtype: str = "bfloat16", reps: int = 10) -> float:
  """TFLOP/s of an n x n x n matrix product on random data (the device's practical peak).

  Random, not zeros: a product of zeros runs faster than real data on the H200.
  """
  a, b = (jax.random.normal(jax.random.key(i), (n, n), DTYPES[dtype]) for i in (0, 1))
  matmul = jax.jit(jnp.matmul)
  for _ in range(3):
    out = matmul(a, b)
  out.block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  return 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


class _NullBar:
  """The loop's per-step progress-bar cost without printing: a tqdm writing to /dev/null."""

  def __init__(self, total: int):
    from tqdm.auto import tqdm  # noqa: PLC0415
    self._file = open(os.devnull, "w")  # noqa: SIM115
    self.bar = tqdm(total=total, file=self._file, leave=False)

  def close(self):
    self.bar.close()
    self._file.close()


def time_loop(run, state, warmup: int, n: int):
  """Warm-up, then `n` synchronised steps, then `n` steps dispatched back to back.

  `run.step(state) -> state` must return something `run.sync` can wait on; returns (state, synced
  step times, loop time per step, host time per step).
  """
  for _ in range(warmup):
    state = run.step(state)
  run.sync(state)
  synced = []
  for _ in range(n):
    t0 = time.perf_counter()
    state = run.step(state)
    run.sync(state)
    synced.append(time.perf_counter() - t0)
  bar = _NullBar(n)
  host = []
  t_all = time.perf_counter()
  for _ in range(n):
    t0 = time.perf_counter()
    state = run.step(state)
    bar.bar.update(1)
    host.append(time.perf_counter() - t0)
  run.sync(state)
  loop = (time.perf_counter() - t_all) / n
  bar.close()
  return state, synced, loop, host


@dataclasses.dataclass
class Runner:
  step: object
  sync: object


def timing_fields(batch: int, synced: list[float], loop_s: float, host: list[float],
                   per_dispatch: int = 1) -> dict:
  """Throughput from the back-to-back loop (what training sees); the synced median beside it.

  Also each dispatch's host time, and how many dispatches returned before the first one that
  waited (took over half the loop's time per dispatch): 0 when every call waits (the dispatch
  itself, or a wait inside it, sets the pace), all of them when the host never waited (it ran
  ahead of the device), and in between the depth of a bounded queue of computations in flight.
  """
  step_s = loop_s / per_dispatch
  ahead = next((i for i, h in enumerate(host) if h > 0.5 * loop_s), len(host))
  return {"ms_per_step": 1e3 * step_s, "images_per_s": batch / step_s,
          "synced_ms_per_step": _median_ms(synced) / per_dispatch,
          "host_ms_per_step": _median_ms(host) / per_dispatch,
          "host_ms_each": [round(1e3 * h / per_dispatch, 4) for h in host],
          "dispatches_before_a_wait": ahead}


class JaxBench:
  """Shared inputs of every JAX row: the mesh, the resident synthetic data, initial variables."""

  def __init__(self, args):
    self.args = args
    self.mesh = parallel.make_mesh()
    self.repl = parallel.replicated(self.mesh)
    self.image_shape = (args.image_size, args.image_size, 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.dataset_size, *self.image_shape), dtype=np.uint8)
    labels = rng.integers(0, args.num_classes, (args.dataset_size,), dtype=np.int32)
    self.images = parallel.put_dataset(images, self.mesh)
    self.labels = parallel.put_dataset(labels, self.mesh)
    self.perm = jax.device_put(rng.permutation(args.dataset_size).astype(np.int32), self.repl)
    self._vars: dict = {}

  def block(self, depth: int, teacher: bool = False) -> ml_collections.ConfigDict:
    """The student's or the teacher's config block (`depth`: the ResNet's, when it is one)."""
    return network_block(self.args, "teacher" if teacher else "student", depth)

  def model(self, depth: int, dtype, remat: bool = False, teacher: bool = False) -> nn.Module:
    block = self.block(depth, teacher)
    if remat:  # a network without the switch refuses it (the row's error)
      block.remat = True
    return build_model(block, self.args.num_classes, dtype)

  def variables(self, depth: int, teacher: bool = False) -> dict:
    """fp32 variables (the same for either compute dtype), made once per network and kept on the
    host, so that every row's `device_put` makes fresh buffers for its step to donate. The draw
    is the depth's (a teacher of another depth than the paper's gets its own, so that a teacher as
    deep as the student differs from it); a named network's is its role's.

    The BatchNorm running statistics are calibrated on augmented synthetic batches, the inputs
    the step feeds the teacher, as a trained network's are: with the initial ones (mean 0,
    variance 1) an inference-mode ResNet34's activations grow with depth, the distillation losses
    are in the hundreds and climbing, and a step computing on overflowing values (or denormals,
    which are slow on CPUs) is not a representative timing.
    """
    block = self.block(depth, teacher)
    if block.get("arch"):
      seed = 2000 + int(teacher)
      key = (seed, block.to_json(sort_keys=True))
    else:
      seed = 1000 + depth if teacher and depth != TEACHER_DEPTH else depth
      key = seed
    if key not in self._vars:
      model = self.model(depth, jnp.float32, teacher=teacher)
      variables = init_variables(model, jax.random.key(seed), self.image_shape)
      batch = self.images[:min(self.args.dataset_size, 128)]
      data_config = base_config("cifar100", "kd").data

      @jax.jit
      def calibrate(v, key):
        x = augment.train_preprocess(batch, key, data_config, cifar100.MEAN, cifar100.STD)
        _, updated = model.apply(v, x, train=True, mutable=["batch_stats"])
        return {"params": v["params"], "batch_stats": updated["batch_stats"]}

      for i in range(CALIBRATION_PASSES):  # momentum 0.9: 0.9**40 of the initial value is left
        variables = calibrate(variables, jax.random.key(i))
      self._vars[key] = jax.device_get(variables)
    return self._vars[key]

  def _inputs(self, case_name: str, batch: int, dtype_name: str, abstract: bool = False):
    """What the case's steps are built from, as the training loop's (`steps.StepSpec`), its train
    state and data.

    `abstract`: the variables and state as `jax.ShapeDtypeStruct`s (for a FLOP count that
    lowers the step without computing or placing anything); else real ones on the devices.
    """
    case = CASES[case_name]
    config = base_config("cifar100", case.method)
    config.method.memory_lean = case.memory_lean
    model = self.model(config.model.depth, DTYPES[dtype_name], case.remat)
    method = get_method(case.method).for_stages(model.num_stages)
    teacher = (self.model(self.args.teacher_depth, DTYPES[dtype_name], teacher=True)
               if method.needs_teacher else None)
    # none for a pair of equal stage shapes (the paper's ResNets)
    pair_adapters = (adapters.for_pair(model, teacher, method, self.image_shape)
                     if teacher is not None else adapters.NONE)
    tx = freeze.mask_optimizer(
        make_optimizer(config.optim, TOTAL_STEPS, TOTAL_STEPS / len(method.phases)), method)
    steps_per_epoch = self.args.dataset_size // batch
    if steps_per_epoch == 0:
      raise ValueError(f"--dataset-size {self.args.dataset_size} is smaller than the batch "
                       f"{batch}.")
    spec = steps.StepSpec(model=model, teacher=teacher, method=method,
                          method_config=config.method, data_config=config.data, tx=tx,
                          mean=cifar100.MEAN, std=cifar100.STD, batch_size=batch,
                          steps_per_epoch=steps_per_epoch, adapters=pair_adapters)
    # the adapters' variables beside the student's, as `train` attaches them
    def with_adapters(v):
      return adapters.attach(v, pair_adapters.init(jax.random.key(3)))

    if abstract:
      def variables(depth, teacher=False):
        return abstract_variables(self.model(depth, jnp.float32, teacher=teacher),
                                  self.image_shape)
      place = lambda tree: tree  # noqa: E731
      state = jax.eval_shape(lambda v: steps.create_train_state(with_adapters(v), tx),
                             variables(config.model.depth))
    else:
      variables = self.variables
      place = lambda tree: jax.device_put(tree, self.repl)  # noqa: E731
      state = place(steps.create_train_state(with_adapters(variables(config.model.depth)), tx))
    teacher_vars = (place(variables(self.args.teacher_depth, teacher=True)) if teacher is not None
                    else None)
    return spec, state, (self.images, self.labels, self.perm, teacher_vars)

  def _step(self, case_name: str, batch: int, dtype_name: str, abstract: bool = False):
    """The case's one step as the training loop builds it (`steps.partition_step`), its train
    state, metric sums and data (`abstract`: see `_inputs`)."""
    spec, state, data = self._inputs(case_name, batch, dtype_name, abstract)
    step_fn = steps.partition_step(spec, CASES[case_name].phase, self.mesh)
    sums = steps.zero_metrics_like(step_fn, state, *data)
    return step_fn, state, (sums if abstract else jax.device_put(sums, self.repl)), data

  def profile(self, runner: "Runner", carry, label: str, per_dispatch: int, compiled):
    """`--profile-steps` more dispatches back to back under the profiler; (carry, summary).

    The compiled step's optimised HLO is written beside the trace (`step.hlo.txt`): the trace
    names XLA's fusions and custom calls, and only the HLO says what each one computes (which
    convolution, in which layout, fused with what).
    """
    trace_dir = os.path.join(self.args.out, "traces", label)
    dispatches = max(self.args.profile_steps // per_dispatch, 1)
    jax.profiler.start_trace(trace_dir)
    try:
      for _ in range(dispatches):
        carry = runner.step(carry)
      runner.sync(carry)
    finally:
      jax.profiler.stop_trace()
    trace = profiling.find_trace(trace_dir)
    if trace is None:
      return carry, {"error": f"no *.trace.json.gz under {trace_dir}"}
    summary = profiling.summarize_trace(trace, dispatches * per_dispatch)
    summary["trace"] = os.path.relpath(trace, self.args.out)
    try:
      hlo = compiled.as_text()
    except Exception as e:  # noqa: BLE001 (a backend may not keep the text: the trace still counts)
      hlo, summary["hlo_error"] = None, f"{type(e).__name__}: {e}"
    if hlo:
      hlo_path = os.path.join(trace_dir, "step.hlo.txt")
      with open(hlo_path, "w") as f:
        f.write(hlo)
      summary["hlo"] = os.path.relpath(hlo_path, self.args.out)
    log.info(f"[benchmark] profile {label}: {profiling.describe(summary)}")
    return carry, summary

  def step_gflop(self, case_name: str, batch: int, dtype_name: str) -> float | None:
    """XLA's GFLOP count of one step, from the lowered program (nothing is compiled or run)."""
    step_fn, state, sums, data = self._step(case_name, batch, dtype_name, abstract=True)
    return _cost_gflop(jax.jit(steps.accumulate_metrics(step_fn)).lower(state, sums, *data))

  def row(self, case_name: str, batch: int, dtype_name: str, per_dispatch: int = 1) -> dict:
    spec, state, data = self._inputs(case_name, batch, dtype_name)
    label = (f"{self.args.jax_label}_{case_name}_b{batch}_{dtype_name}_x{per_dispatch}"
             .replace(" ", "-"))
    # the trainer's options for this step (its config's), then the command line's over them
    config_options = base_config("cifar100", CASES[case_name].method).get("compiler_options")
    options = {**(runtime.compiler_options(config_options) or {}), **self.args.xla_options}
    chosen = dict(options)
    dump_dir = None
    if self.args.xla_dump:
      dump_dir = os.path.join(self.args.out, "xla_dump", label)
      options["xla_dump_to"] = os.path.abspath(dump_dir)
    with _without_persistent_cache() if dump_dir else contextlib.nullcontext():
      t0 = time.perf_counter()
      step = steps.compile_partition_step(spec, CASES[case_name].phase, per_dispatch, self.mesh,
                                          state, *data, compiler_options=options or None)
      compile_s = time.perf_counter() - t0
    compiled, sums = step.compiled, jax.device_put(step.zero_sums, self.repl)
    dumped = _keep_memory_reports(dump_dir) if dump_dir else None
    mem = compiled.memory_analysis()
    # one step's count: the timed program's own when it is one step, else the single-step
    # program's (a scan's loop body would count once)
    gflop = _cost_gflop(step.lowered if per_dispatch == 1 else
                        jax.jit(steps.accumulate_metrics(step.step_fn)).lower(state, sums, *data))

    runner = Runner(lambda carry: compiled(*carry, *data), jax.block_until_ready)
    (state, sums), synced, loop, host = time_loop(runner, (state, sums), self.args.warmup,
                                                  self.args.steps)
    profile = None
    if self.args.profile_steps:
      (state, sums), profile = self.profile(runner, (state, sums), label, per_dispatch,
                                            compiled)
    loss = float(sums["loss"]) / max(float(sums["count"]), 1.0)
    row = {
        "framework": self.args.jax_label, "case": case_name, "batch": batch,
        "dtype": dtype_name,
        "steps_per_dispatch": per_dispatch, "compile_s": compile_s,
        **timing_fields(batch, synced, loop, host, per_dispatch),
        "peak_mib": None, "temp_mib": None, "donated_mib": None,
        "gflop_per_step": gflop,
        "mean_loss": loss, "loss_finite": math.isfinite(loss),
    }
    if os.environ.get("XLA_FLAGS"):
      row["xla_flags"] = os.environ["XLA_FLAGS"]
    if chosen:
      row["xla_options"] = chosen
    if profile is not None:
      row["profile"] = profile
    if dumped is not None:
      row["xla_dump"] = [os.path.relpath(f, self.args.out) for f in dumped]
    if mem is not None:
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes)
      row["peak_mib"] = peak / 2 ** 20
      row["temp_mib"] = mem.temp_size_in_bytes / 2 ** 20
      # the donated train state and metric sums, updated in place: about the state's size
      row["donated_mib"] = mem.alias_size_in_bytes / 2 ** 20
    del step, compiled, state, sums
    return row


@contextlib.contextmanager
def _without_persistent_cache():
  """Compile past the persistent compilation cache: XLA dumps only what it compiles, and a program
  read from the cache is not compiled (the dump options are no part of the cache key). JAX
  decides once per process whether it uses the cache, so it is reset on the way in and out."""
  was = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", was)
    compilation_cache.reset_cache()


def _keep_memory_reports(dump_dir: str) -> list[str]:
  """The memory files of XLA's dump of the timed step, everything else in `dump_dir` deleted.

  XLA writes, per compiled module, its HLO before and after optimisation and the generated code
  too (tens of MiB for these steps); what explains a peak is the buffer assignment (every buffer,
  its size and live range, and the buffers live at the peak) and the memory-usage report (the
  allocations by size). Only the step's module is kept: `jit_step` or `jit_steps`.
  """
  kept = []
  for root, _, files in os.walk(dump_dir):
    for name in sorted(files):
      path = os.path.join(root, name)
      if ".jit_step" in name and name.endswith(("-buffer-assignment.txt",
                                                 "-memory-usage-report.txt")):
        kept.append(path)
      else:
        os.remove(path)
  if not kept:
    log.warning(f"[benchmark] --xla-dump: XLA wrote no memory report for the step under {dump_dir}")
  return kept
