"""Time every method's training step, next to the PyTorch reference of the same step, in one run.

For each case (teacher CE, vanilla KD, AT, Jacobian, DnD, memory-lean DnD, each Progressive DnD
phase, and KD and DnD with rematerialised blocks), batch size and dtype, on synthetic data
(random uint8 images resident on the device, so nothing is downloaded), it builds the training
step with the training loop's own builder (`steps.compile_partition_step`: `steps.make_train_step`
with `dnd_jax.freeze`'s wrappers, in the program the loop dispatches, `steps.dispatched_step`:
jitted, donated, batch sharded over every device, gather + augmentation inside) and reports:

  compile time          trace + lower + compile, as the trainer counts its compile time (a hit
                        when the persistent compilation cache is on and holds the program; the
                        run's meta says whether it was on)
  images/s, ms/step     from the steps dispatched back to back as the training loop does (one
                        synchronisation at the end): what an epoch costs per step
  synced ms/step        median of the same steps each synchronised on its own (latency)
  host ms/step          time the loop spends in Python per step (the step call + a progress-bar
                        update), the median; hidden behind the device while it is below ms/step.
                        The JSON keeps each step's (`host_ms_each`) and how many dispatches
                        returned before the first that waited for the device
                        (`dispatches_before_a_wait`): a median equal to ms/step with that count
                        at 0 means every call waited, with a count above 0 a bounded queue
  peak, temp memory     XLA's memory analysis of the compiled step (argument + output - aliased +
                        temporaries; a compile-time figure), and its temporaries alone
  GFLOP/step, % peak    XLA's cost analysis of the lowered step (the compiled one misses cuDNN's
                        convolutions on a GPU; `--recount-flops` fixes older tables), and the
                        share of the device's dense peak it reaches at the loop's speed: against
                        the data sheet, and against what such a device really reaches on a large
                        matrix product (measured in this run with --measure-peak N, else the
                        figure recorded for the lent H100/H200 in MEASURED_PEAK_TFLOPS)

and, on the same device in the same run, `dnd_jax.torch_reference` (eager, torch.compile and
torch.compile with CUDA graphs) for the methods it implements, with XLA's FLOP count of the same
step for its % of peak. The networks are the paper's ResNet pair (`--width`, `--teacher-depth`)
unless `--student-arch` / `--teacher-arch` name any pair of `models.ARCHS` (family keyword
arguments as JSON with `--student-arch-kwargs` / `--teacher-arch-kwargs`; JAX rows only): its
steps get the pair's stage adapters as training's do, and the table's meta records the pair
(an `--append` must match it). With `--steps-per-dispatch K > 1` the cases of `--scan-methods` get a
second row running K steps per dispatch (`lax.scan`, as `config.steps_per_dispatch` does).
With `--profile-steps N` each JAX row then runs N more steps under `jax.profiler` (the trace in
<out>/traces/<row>/, beside the step's optimised HLO, step.hlo.txt, which says what the trace's op
names compute) and adds the trace's summary (`dnd_jax.profiling.summarize_trace`): the device's
busy time per step against the step's span, kernels and launches per step, ms per op class; it
tells a device-bound step from one the host's launches hold back.
`--xla-dump` keeps, per JAX row, XLA's buffer assignment and memory-usage report of its step
(under <out>/xla_dump/<row>/): which buffers are alive at the peak that the memory columns report.
The timed steps compile with the trainer's XLA options (`config.compiler_options`, see
`dnd_jax.runtime.compiler_options`); `--xla-option NAME=VALUE` sets one over them (only for the
timed steps: the rest of the run's programs come from the compilation cache as usual), and
`--jax-label` names such a variant's JAX rows so that they stand apart from the default rows of
the same table; the rows record their options (and any XLA_FLAGS of the environment).

It writes <out>/benchmark.json and <out>/benchmark.md after every row, so a run cut off by a
time limit keeps what it finished; `--append` adds rows to what <out> already holds (the GPU
script runs its parts in priority order this way, see docs/benchmarks.md). `scripts/benchmark.py`
is its command line.

The parts: `harness` builds and times the JAX steps (the cases, the timing loop, `JaxBench`),
`torch_rows` times the PyTorch reference of the same steps, `report` holds the hardware peak
tables, the targets' verdicts and the files it writes, and `cli` parses the flags and runs the rows.
"""
