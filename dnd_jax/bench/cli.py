"""The benchmark's command line (`scripts/benchmark.py`): its flags and presets, the run of every
requested row with the files rewritten after each, `--append` and `--recount-flops`.
"""

import argparse
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import sys
import traceback

import jax

import dnd_jax.bench
from dnd_jax import cli
from dnd_jax.configs import base_config
from dnd_jax.bench.harness import (CASES, NO_ARCHS, TEACHER_DEPTH, JaxBench, measure_matmul_tflops,
                                   network_block)
from dnd_jax.bench.report import JSON_FILE, MARKDOWN_FILE, is_jax, markdown, write_outputs
from dnd_jax.bench.torch_rows import TORCH_MODES, torch_row, torch_supports
from dnd_jax.models import ARCHS, DTYPES, STAGE_SIZES, build_model

log = logging.getLogger(__name__)

PRESETS = {
    "cpu": dict(width=8, image_size=16, batch_sizes="128", dtypes="float32,bfloat16", steps=5,
                warmup=2, dataset_size=1024, torch="eager", steps_per_dispatch=1),
    "accelerator": dict(width=64, image_size=32, batch_sizes="128,256,512",
                        dtypes="float32,bfloat16", steps=30, warmup=5, dataset_size=50_000,
                        torch="eager,compile", steps_per_dispatch=8),
}


def _versions() -> dict:
  import flax  # noqa: PLC0415
  import jaxlib  # noqa: PLC0415
  try:  # from the installed package's metadata: importing torch takes seconds, and a JAX-only
    # benchmark (--torch none) never needs it
    torch_version = importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    torch_version = "not installed"
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "torch": torch_version, "python": platform.python_version()}


def _host() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
  except OSError:
    model = platform.processor()
  return f"{model}, {os.cpu_count()} cores"


def recount_flops(out: str) -> dict:
  """Rewrites <out>/benchmark.json and .md with every case's FLOP count from its lowered step.

  For tables written before the count came from the lowered program (a GPU run's compiled count
  misses the convolutions, see `_cost_gflop`): the lowered program depends only on the shapes in
  the table's meta, so any machine, a CPU one too, counts what the recorded device ran. The
  counts go into each single-step JAX row and, for every case of the table, into
  meta["gflop_per_step"] (PyTorch rows without a JAX row read theirs from there).
  """
  path = os.path.join(out, JSON_FILE)
  with open(path) as f:
    result = json.load(f)
  meta = result["meta"]
  args = argparse.Namespace(width=meta["width"], image_size=meta["image_size"],
                            num_classes=meta["num_classes"], dataset_size=meta["dataset_size"],
                            teacher_depth=meta.get("teacher_depth", TEACHER_DEPTH),
                            **{k: meta.get(k, v) for k, v in NO_ARCHS.items()})
  bench = JaxBench(args)
  counted = {}
  for r in result["rows"]:
    key = f"{r['case']}/{r['batch']}/{r['dtype']}"
    if r["case"] in CASES and key not in counted:
      log.info(f"[benchmark] counting {key} ...")
      counted[key] = bench.step_gflop(r["case"], r["batch"], r["dtype"])
    if is_jax(r) and r.get("steps_per_dispatch", 1) == 1 and "error" not in r:
      r["gflop_per_step"] = counted[key]
  meta["gflop_per_step"] = counted
  meta["flops_recounted"] = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
                             f" on {jax.default_backend()}, jax {jax.__version__}, from the "
                             "lowered steps")
  write_outputs(out, result)
  return result


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="scripts/benchmark.py", description=dnd_jax.bench.__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--methods", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
  p.add_argument("--batch-sizes", help="comma list (cpu: 128; accelerator: 128,256,512)")
  p.add_argument("--dtypes", help="comma list of float32, bfloat16")
  p.add_argument("--width", type=int, help="ResNet base width (64 is the paper's; cpu default 8)")
  p.add_argument("--image-size", type=int, help="image side (32 is CIFAR's; cpu default 16)")
  p.add_argument("--teacher-depth", type=int,
                 help=f"ResNet depth of the teacher ({TEACHER_DEPTH}, the default, is the paper's; "
                      "18 compiles faster, for the scripts' toy runs)")
  p.add_argument("--student-arch", default="", metavar="NAME",
                 help="the student, a network of models.ARCHS (e.g. shufflev2; default the "
                      "paper's ResNet18 at --width), as config.model.arch")
  p.add_argument("--teacher-arch", default="", metavar="NAME",
                 help="the teacher, a network of models.ARCHS (e.g. resnet32x4), instead of the "
                      "ResNet of --teacher-depth; stage adapters join the pair as in training")
  p.add_argument("--student-arch-kwargs", default="", metavar="JSON",
                 help="the student's family keyword arguments as a JSON object (as "
                      "config.model.arch_kwargs), e.g. '{\"num_blocks\": [1, 1, 1]}'")
  p.add_argument("--teacher-arch-kwargs", default="", metavar="JSON",
                 help="the same for --teacher-arch")
  p.add_argument("--num-classes", type=int, default=100)
  p.add_argument("--dataset-size", type=int, help="synthetic images resident on the device")
  p.add_argument("--steps", type=int, help="timed steps per row (synced, then back to back)")
  p.add_argument("--warmup", type=int, help="untimed steps per row after compiling")
  p.add_argument("--torch", help=f"comma list of {', '.join(TORCH_MODES)}; 'none' skips PyTorch")
  p.add_argument("--no-jax", action="store_true",
                 help="PyTorch rows only (their FLOP count comes from JAX rows already in --out)")
  p.add_argument("--steps-per-dispatch", type=int,
                 help="K > 1 adds a row of K steps per dispatch for each --scan-methods case")
  p.add_argument("--scan-methods", default="dnd,pdnd_p3")
  p.add_argument("--measure-peak", type=int, default=0, metavar="N",
                 help="time an N^3 bf16 matrix product first, for '%% of peak (measured)' "
                      "(8192 on a GPU; 0 = use the recorded figure)")
  p.add_argument("--profile-steps", type=int, default=0, metavar="N",
                 help="after timing, trace N more steps of each JAX row with jax.profiler and "
                      "add the trace's summary (traces in <out>/traces/)")
  p.add_argument("--xla-option", action="append", default=[], metavar="NAME=VALUE",
                 help="an XLA option for the timed steps' compile (repeatable), e.g. "
                      "xla_gpu_enable_command_buffer=FUSION,CONVOLUTION")
  p.add_argument("--xla-dump", action="store_true",
                 help="keep XLA's buffer assignment and memory-usage report of each JAX row's "
                      "step (under <out>/xla_dump/<row>/; compiled past the compilation cache): "
                      "what is alive at the peak")
  p.add_argument("--jax-label", default="jax",
                 help="framework name of this run's JAX rows, starting with 'jax' (e.g. "
                      "'jax conv-graphs' for a run with --xla-option)")
  p.add_argument("--preset", choices=sorted(PRESETS),
                 help="defaults for unset flags; by default 'cpu' on a CPU, else 'accelerator'")
  p.add_argument("--out", default=None, help="output folder (default runs/benchmark_<backend>)")
  p.add_argument("--append", action="store_true",
                 help="keep the rows already in <out>/benchmark.json and add these")
  p.add_argument("--recount-flops", action="store_true",
                 help="only rewrite <out>'s FLOP counts and %% of peak from the lowered steps "
                      "(for tables whose counts came from a GPU's compiled program)")
  args = p.parse_args(argv)
  preset = PRESETS[args.preset or ("cpu" if jax.default_backend() == "cpu" else "accelerator")]
  for key, value in preset.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.methods = [m for m in args.methods.split(",") if m]
  unknown = [m for m in args.methods if m not in CASES]
  if unknown:
    p.error(f"unknown --methods {unknown}; choose from {', '.join(CASES)}")
  try:
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
  except ValueError:
    p.error(f"--batch-sizes takes a comma list of whole numbers, e.g. 128,512 (got "
            f"{args.batch_sizes!r})")
  args.dtypes = [d for d in args.dtypes.split(",") if d]
  if any(d not in DTYPES for d in args.dtypes):
    p.error(f"--dtypes must be from {sorted(DTYPES)}")
  args.torch = [] if args.torch in ("none", "") else args.torch.split(",")
  if any(t not in TORCH_MODES for t in args.torch):
    p.error(f"--torch takes a comma list of {', '.join(TORCH_MODES)}, or none")
  args.scan_methods = [m for m in args.scan_methods.split(",") if m]
  bad = [o for o in args.xla_option if "=" not in o or not o.split("=", 1)[0]]
  if bad:
    p.error(f"--xla-option takes NAME=VALUE (got {bad[0]!r}), e.g. "
            "xla_gpu_enable_command_buffer=FUSION,CONVOLUTION")
  args.xla_options = dict(o.split("=", 1) for o in args.xla_option)
  if not args.jax_label.startswith("jax"):
    p.error(f"--jax-label must start with 'jax' (got {args.jax_label!r}), e.g. 'jax conv-graphs'")
  if args.teacher_arch and args.teacher_depth is not None:
    p.error(f"--teacher-depth is the ResNet teacher's; --teacher-arch {args.teacher_arch} names "
            "another: give one of them")
  if not args.teacher_arch:
    args.teacher_depth = TEACHER_DEPTH if args.teacher_depth is None else args.teacher_depth
    if args.teacher_depth not in STAGE_SIZES:
      p.error(f"--teacher-depth must be one of {sorted(STAGE_SIZES)} (got {args.teacher_depth})")
  _parse_pair(p, args)
  if args.profile_steps < 0:
    p.error("--profile-steps must be 0 (no trace) or a number of steps")
  args.out = args.out or os.path.join("runs", f"benchmark_{jax.default_backend()}")
  return args


def _parse_pair(p, args) -> None:
  """--student-arch / --teacher-arch and their JSON keyword arguments: known networks that take
  them, with as many stages (what makes a pair, as `config_check` requires of a run). Only the
  modules are made: nothing is computed before the flags are known to be good."""
  for role in ("student", "teacher"):
    arch, text = getattr(args, f"{role}_arch"), getattr(args, f"{role}_arch_kwargs")
    flag = f"--{role}-arch"
    if text and not arch:
      p.error(f"{flag}-kwargs is for a network {flag} names; give {flag} too")
    try:
      kwargs = json.loads(text) if text else {}
    except ValueError as e:
      p.error(f"{flag}-kwargs {text!r} is not JSON ({e}); e.g. '{{\"widths\": [4, 4, 8, 16]}}'")
    if not isinstance(kwargs, dict):
      p.error(f"{flag}-kwargs {text!r} is not a JSON object of keyword arguments")
    setattr(args, f"{role}_arch_kwargs", kwargs)
    if arch and arch not in ARCHS:
      p.error(f"{flag} {arch!r} is no known network; use one of {', '.join(ARCHS)}")
  if (args.student_arch or args.teacher_arch) and args.torch:
    p.error("--student-arch / --teacher-arch: the PyTorch reference is the paper's ResNet pair "
            "only; add --torch none")
  stages = {}
  for role in ("student", "teacher"):
    depth = base_config("cifar100", "kd").model.depth if role == "student" else args.teacher_depth
    block = network_block(args, role, depth)
    try:
      stages[role] = build_model(block, args.num_classes).num_stages
    except TypeError as e:
      p.error(f"--{role}-arch-kwargs {block.arch_kwargs.to_dict()}: {block.arch!r} does not take "
              f"them ({e})")
  if stages["student"] != stages["teacher"]:
    name = lambda role, default: getattr(args, f"{role}_arch") or default  # noqa: E731
    p.error(f"the student ({name('student', 'resnet18')}) has {stages['student']} stages and the "
            f"teacher ({name('teacher', f'ResNet{args.teacher_depth}')}) {stages['teacher']}: "
            "distillation pairs stage k of one with stage k of the other (docs/models.md lists "
            "each network's stages)")


def _command(argv) -> str:
  words = sys.argv[1:] if argv is None else argv
  return "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in words)


def _start(args, command: str) -> dict:
  """A new result, or (with --append) the one in args.out, which must describe the same setup."""
  devices = jax.devices()
  meta = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "commands": [command],
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "device_count": len(devices), "host": _host(), "width": args.width,
      "image_size": args.image_size, "num_classes": args.num_classes,
      "teacher_depth": args.teacher_depth, "dataset_size": args.dataset_size,
      **{k: getattr(args, k) for k in NO_ARCHS},
      "steps": args.steps, "warmup": args.warmup,
      "compilation_cache": jax.config.jax_compilation_cache_dir,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_affinity": len(os.sched_getaffinity(0)), **_versions(),
  }
  path = os.path.join(args.out, JSON_FILE)
  if not (args.append and os.path.isfile(path)):
    return {"meta": meta, "rows": []}
  try:
    with open(path) as f:
      result = json.load(f)
    old = result["meta"]
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"--append to {path}, which is not a benchmark table ({type(e).__name__}: "
                     f"{e}); use another --out, or move that file away.") from e
  # a table from before --teacher-depth (or the arch flags) existed had the paper's networks
  was = {"teacher_depth": TEACHER_DEPTH, **NO_ARCHS, **old}
  differs = [k for k in ("device_kind", "width", "image_size", "num_classes", "dataset_size",
                         "teacher_depth", *NO_ARCHS) if was.get(k) != meta[k]]
  if differs:
    raise ValueError(f"--append to {path}, whose rows differ in "
                     + ", ".join(f"{k} ({was.get(k)} there, {meta[k]} here)" for k in differs)
                     + "; use another --out or the same shapes.")
  old["commands"] = old.get("commands", []) + [command]
  return result


def run(args, command: str | None = None) -> dict:
  """Every requested row, with <out>/benchmark.json and .md rewritten after each one."""
  result = _start(args, command or _command(None))
  if args.measure_peak:
    n = args.measure_peak
    log.info(f"[benchmark] {n}^3 bf16 matrix product ...")
    result["meta"].update(measured_matmul_n=n, measured_matmul_tflops=measure_matmul_tflops(n))
    log.info(f"[benchmark] {result['meta']['measured_matmul_tflops']:,.0f} TFLOP/s")
  bench = JaxBench(args)
  rows = result["rows"]

  def attempt(label: str, fn, base: dict):
    log.info(f"[benchmark] {label} ...")
    try:
      row = fn()
      log.info(f"[benchmark] {label}: {row['ms_per_step']:.2f} ms/step, "
               f"{row['images_per_s']:,.0f} images/s")
    except Exception as e:  # a failing row (out of memory, torch.compile) must not end the run
      traceback.print_exc()
      row = {**base, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    rows.append(row)
    write_outputs(args.out, result)

  for dtype in args.dtypes:
    for batch in args.batch_sizes:
      for case in args.methods:
        base = {"case": case, "batch": batch, "dtype": dtype, "steps_per_dispatch": 1}
        if not args.no_jax:
          attempt(f"jax {case} b{batch} {dtype}", lambda: bench.row(case, batch, dtype),
                  {**base, "framework": args.jax_label})
          k = args.steps_per_dispatch
          if k > 1 and case in args.scan_methods:
            attempt(f"jax {case} b{batch} {dtype} x{k}",
                    lambda: bench.row(case, batch, dtype, k),
                    {**base, "framework": args.jax_label, "steps_per_dispatch": k})
        if args.torch and torch_supports(case):
          for mode in args.torch:
            label = TORCH_MODES[mode][0]
            attempt(f"{label} {case} b{batch} {dtype}",
                    lambda: torch_row(bench, case, batch, dtype, mode),
                    {**base, "framework": label})
  write_outputs(args.out, result)
  return result


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.recount_flops:
    result = recount_flops(args.out)
    print(markdown(result))
    return result
  result = run(args, _command(argv))
  print(markdown(result))
  log.info(f"[benchmark] wrote {args.out}/{JSON_FILE} and {MARKDOWN_FILE}")
  return result
