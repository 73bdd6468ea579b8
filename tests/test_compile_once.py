"""Compile once, run many: runs that differ in epoch budget, learning rate or seed run the same
compiled programs; and the summary splits the wall time, adding up across a resume."""

import os

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from dnd_jax import config_check, runtime, steps
from dnd_jax.configs import base_config
from dnd_jax.methods import get_method
from dnd_jax.models import ResNet, init_variables
from dnd_jax.optim import make_optimizer
from dnd_jax.timing import PARTS
from dnd_jax.train import read_metrics, train_and_evaluate

IMAGE = (8, 8, 3)


def _lowered_pdnd_step(total_steps: int, lr: float, seed: int) -> str:
  """The StableHLO of Progressive DnD's first-partition step, as train.py builds it (lowered
  from the arguments' shapes: tracing only, nothing is compiled or run)."""
  config = base_config("cifar100", "pdnd")
  config.optim.lr = lr
  method = get_method("pdnd")
  model = ResNet(depth=18, num_classes=10, width=4)
  teacher = ResNet(depth=34, num_classes=10, width=4)
  tx = make_optimizer(config.optim, total_steps, total_steps / len(method.phases))
  state = jax.eval_shape(lambda: steps.create_train_state(
      init_variables(model, jax.random.key(seed), IMAGE), tx, seed))
  teacher_vars = jax.eval_shape(lambda: init_variables(teacher, jax.random.key(1), IMAGE))
  step = steps.make_train_step(
      model=model, teacher=teacher, method=method, groups=method.partition(0),
      method_config=config.method, data_config=config.data, tx=tx, mean=(0.5,) * 3,
      std=(0.25,) * 3, batch_size=8, steps_per_epoch=4)
  images = jax.ShapeDtypeStruct((32, *IMAGE), jnp.uint8)
  labels = perm = jax.ShapeDtypeStruct((32,), jnp.int32)
  return jax.jit(step, donate_argnums=0).lower(state, images, labels, perm,
                                               teacher_vars).as_text()


def test_two_budgets_learning_rates_and_seeds_lower_to_the_same_step():
  assert _lowered_pdnd_step(60, 0.05, 0) == _lowered_pdnd_step(6000, 0.2, 7)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """A 1-epoch run, then (with every compiled program written to the persistent cache, however
  quick to compile) a 2-epoch run with another learning rate and seed, counting the programs it
  had to compile anew and how often it traced the step's loss; then that run extended to 3 epochs
  by a resume. The programs are those of the session's tiny teacher (tests/conftest.py), so the
  suite compiles them once."""
  root = tmp_path_factory.mktemp("compile_once")
  misses, compiles, traces = [], [], []

  def listener(event, **kwargs):
    if event == "/jax/compilation_cache/cache_misses":
      misses.append(event)

  compile_program = jax.stages.Lowered.compile

  def recording_compile(lowered, compiler_options=None, **kwargs):
    """Which program the second run compiles (or loads from the cache), with which options."""
    compiles.append((lowered.as_text().split("\n", 1)[0], compiler_options))
    return compile_program(lowered, compiler_options=compiler_options, **kwargs)

  group_losses = steps.group_losses

  def traced_group_losses(*args, **kwargs):
    traces.append(kwargs["groups"])
    return group_losses(*args, **kwargs)

  before = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    first = train_and_evaluate(tiny_config("teacher", num_epochs=1), str(root / "first"))
    jax.monitoring.register_event_listener(listener)
    jax.stages.Lowered.compile = recording_compile
    steps.group_losses = traced_group_losses
    try:
      second = train_and_evaluate(
          tiny_config("teacher", num_epochs=2, seed=3, **{"optim.lr": 0.02}), str(root / "second"))
    finally:
      jax.stages.Lowered.compile = compile_program
      steps.group_losses = group_losses
      jax.monitoring.unregister_event_listener(listener)
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
  resumed = train_and_evaluate(tiny_config("teacher", num_epochs=3, seed=3, **{"optim.lr": 0.02}),
                               str(root / "second"))
  losses = [read_metrics(str(root / name))[0]["train_loss"] for name in ("first", "second")]
  return {"first": first, "second": second, "resumed": resumed, "misses": len(misses),
          "losses": losses, "compiles": compiles, "traces": traces}


@pytest.mark.slow
def test_a_second_budget_learning_rate_and_seed_compile_nothing_new(two_runs):
  assert two_runs["misses"] == 0
  assert two_runs["losses"][0] != two_runs["losses"][1]  # they did train differently


@pytest.mark.slow
def test_the_step_is_traced_once_for_its_metric_names_and_its_program(two_runs):
  """Tracing a ResNet step costs seconds of startup: the trace that finds the metric names
  (`steps.zero_metrics_like`) is the one the compiled program is lowered from."""
  assert len(two_runs["traces"]) == 1, two_runs["traces"]


@pytest.mark.slow
def test_the_summary_splits_the_wall_time_and_adds_it_up_across_a_resume(two_runs):
  second, resumed = two_runs["second"], two_runs["resumed"]
  for summary in (second, resumed):
    parts = [summary[f"{part}_time_s"] for part in PARTS]
    assert all(t >= 0.0 for t in parts), parts
    assert sum(parts) <= summary["wall_time_s"]
    for part in ("startup", "compile", "train", "eval", "checkpoint"):
      assert summary[f"{part}_time_s"] > 0.0, part
  # The resumed run continues the totals of the checkpoint it resumed (saved before the first
  # run's final export and summary, which it redoes): one more epoch, another startup.
  for part in ("startup", "compile", "train", "eval", "wall"):
    assert resumed[f"{part}_time_s"] > second[f"{part}_time_s"], part
  assert resumed["time_per_epoch_s"] == pytest.approx(resumed["train_time_s"] / 3)


# --- the training steps' XLA options (config.compiler_options) ---------------------------------


def test_compiler_options_keep_gpu_options_where_xla_knows_them():
  options = base_config("cifar100", "pdnd").compiler_options
  assert runtime.compiler_options(options, "gpu") == {
      "xla_gpu_enable_command_buffer": runtime.GPU_COMMAND_BUFFER}
  # XLA's own list: cuDNN convolutions captured into CUDA graphs failed in training on an H200
  assert "CONVOLUTION" not in runtime.GPU_COMMAND_BUFFER.split(",")
  assert runtime.GPU_COMMAND_BUFFER_CONVOLUTION.split(",")[-1] == "CONVOLUTION"
  config_check.check_compiler_options(
      {"xla_gpu_enable_command_buffer": runtime.GPU_COMMAND_BUFFER_CONVOLUTION})
  assert runtime.compiler_options(options, "cpu") == runtime.compiler_options(options, "gpu")
  assert runtime.compiler_options(options, "tpu") is None
  assert runtime.compiler_options({"xla_dump_to": "d", **options}, "tpu") == {"xla_dump_to": "d"}
  config_check.check_compiler_options(options)  # XLA accepts them (the tests run on the CPU)


@pytest.mark.parametrize("field, value, says", [
    ("xla_gpu_enable_command_buffer", "FUSION,CONVOLUTONS", "'CONVOLUTONS' is not a valid enum"),
    ("xla_gpu_enable_command_bufer", "FUSION", "No such compile option"),
])
def test_a_bad_compiler_option_is_one_config_error_before_any_work(field, value, says, tmp_path):
  config = tiny_config("teacher")
  config.compiler_options[field] = value
  with pytest.raises(config_check.ConfigError) as info:
    train_and_evaluate(config, str(tmp_path / "run"))
  message = str(info.value)
  assert says in message and "config.compiler_options" in message
  assert len([line for line in message.splitlines() if line.strip()]) == 1
  assert not os.path.exists(tmp_path / "run")  # nothing written


@pytest.mark.slow
def test_the_training_steps_compile_with_the_configs_options(two_runs):
  """config.compiler_options reach the training steps' compile, and only theirs (the evaluation
  and the permutation compile with XLA's defaults), after a trivial compile that checks them."""
  compiles = two_runs["compiles"]
  expected = runtime.compiler_options(tiny_config("teacher").compiler_options)
  assert expected  # the CPU keeps the xla_gpu_* default: XLA checks it there
  steps_ = [options for module, options in compiles if "@jit_step " in module]
  checks = [options for module, options in compiles if "@jit__options_check " in module]
  others = [options for module, options in compiles
            if "@jit_step " not in module and "@jit__options_check " not in module]
  assert checks == [expected]  # train_and_evaluate's check of them, before any work
  assert steps_ and all(options == expected for options in steps_), compiles
  assert others and all(options is None for options in others), compiles


def test_cudnn_refusing_a_cuda_graph_is_one_line_naming_the_option_and_the_run_resumes(
    tmp_path, monkeypatch):
  """On an H200 (2026-11-27), XLA's capture of cuDNN convolutions into CUDA graphs
  (",CONVOLUTION") failed at the first distillation step with an UNKNOWN runtime error naming a
  cuDNN status. The CPU cannot capture anything, so the error is raised where the loop first
  reads the step's results; the user gets the fix, and the run resumes without the option."""
  from dnd_jax import loop as loop_lib
  config = tiny_config("teacher")
  config.num_epochs = 2
  config.compiler_options.xla_gpu_enable_command_buffer = runtime.GPU_COMMAND_BUFFER_CONVOLUTION
  workdir = str(tmp_path / "run")
  real = loop_lib.mean_metrics
  calls = []

  def fails_in_epoch_2(parts):
    calls.append(1)
    if len(read_metrics(workdir)) == 1:
      raise jax.errors.JaxRuntimeError(
          "UNKNOWN: <unknown cudnn status: 5003>\nin external/xla+/xla/stream_executor/cuda/"
          "cuda_dnn.cc(5245): 'status' [executable_name='jit_step']")
    return real(parts)

  monkeypatch.setattr(loop_lib, "mean_metrics", fails_in_epoch_2)
  with pytest.raises(config_check.ConfigError) as info:
    train_and_evaluate(config, workdir)
  message = str(info.value)
  assert len(message.splitlines()) == 1
  assert "<unknown cudnn status: 5003>" in message
  assert f"xla_gpu_enable_command_buffer={runtime.GPU_COMMAND_BUFFER} " in message
  assert len(read_metrics(workdir)) == 1  # epoch 1 kept

  # another runtime error, or the same one without the option, is not explained away
  error = jax.errors.JaxRuntimeError("UNKNOWN: <unknown cudnn status: 5003>")
  assert runtime.graph_capture_failure(error, {"xla_gpu_enable_command_buffer":
                                               runtime.GPU_COMMAND_BUFFER}) is None
  assert runtime.graph_capture_failure(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: oom"),
                                       config.compiler_options) is None

  monkeypatch.setattr(loop_lib, "mean_metrics", real)
  config.compiler_options.xla_gpu_enable_command_buffer = runtime.GPU_COMMAND_BUFFER
  summary = train_and_evaluate(config, workdir)
  assert summary["epochs"] == 2 and len(read_metrics(workdir)) == 2

  # any other runtime error comes through as it is, also from a config without compiler_options
  other = tiny_config("teacher")
  del other["compiler_options"]

  def out_of_memory(parts):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes.")

  monkeypatch.setattr(loop_lib, "mean_metrics", out_of_memory)
  with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
    train_and_evaluate(other, str(tmp_path / "other"))
