"""What the rows mean beside the hardware and the targets: the devices' peak tables, each row's share
of the peak, the issue's targets read off the rows, and the markdown and JSON files of a run.
"""

import json
import os

from dnd_jax import profiling, workdir as run_folder
from dnd_jax.bench.harness import CASES, TEACHER_DEPTH

JSON_FILE, MARKDOWN_FILE = "benchmark.json", "benchmark.md"

# Dense (no structured sparsity) peak tensor throughput in TFLOP/s, from the vendors' data sheets:
# NVIDIA H100 (SXM / PCIe / NVL) and H200 product briefs, A100 data sheet, L4, L40S, A10 and V100
# data sheets (their tables quote "with sparsity" figures, halved here); Google Cloud TPU system
# architecture pages (v4, v5e, v5p, v6e). fp32 rows are measured against TF32 where the device has
# it, since XLA (and cuDNN in PyTorch) run fp32 convolutions on TF32 tensor cores by default; plain
# fp32 is much lower (H100 SXM: 67 TFLOP/s). TPUs run fp32 matmuls and convolutions as one bf16
# pass by default. First match wins, so longer names come first.
PEAK_TFLOPS = [
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.0, "float32": 417.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.0}),  # SXM; fp32 67 without TF32
    ("H200", {"bfloat16": 989.0, "float32": 494.0}),  # same compute as H100 SXM
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),  # SXM and PCIe; fp32 19.5 without TF32
    ("L40S", {"bfloat16": 362.0, "float32": 183.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
    ("A10", {"bfloat16": 125.0, "float32": 62.5}),
    ("V100", {"bfloat16": None, "float32": 15.7}),  # no bf16 tensor cores
    ("TPU v6", {"bfloat16": 918.0, "float32": 918.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),  # v5p
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
]
# What the machines lent to this project really reach (bf16 only), the fallback when a run does not
# time its own matrix product; where the figures come from: docs/benchmarks.md, "How to run".
MEASURED_PEAK_TFLOPS = [("H100 80GB HBM3", {"bfloat16": 790.0}), ("H200", {"bfloat16": 790.0})]


def _lookup(table, device_kind: str, dtype: str) -> float | None:
  for pattern, peaks in table:
    if pattern.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The data sheet's dense peak of `device_kind` for `dtype` (None: unknown)."""
  return _lookup(PEAK_TFLOPS, device_kind, dtype)


def measured_peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The dense peak recorded on this kind of lent machine (None: not measured)."""
  return _lookup(MEASURED_PEAK_TFLOPS, device_kind, dtype)


def add_flop_shares(rows: list[dict], device_kind: str, run_peak: dict | None = None,
                    counted: dict | None = None) -> None:
  """% of the device's peak, from XLA's FLOP count of the single-step JAX row of the same case
  (the scanned row's own count is unreliable: cost analysis undercounts inside loops), or else
  from `counted["case/batch/dtype"]` (`recount_flops`, for PyTorch rows run without JAX rows).

  `pct_of_peak` is against the data sheet; `pct_of_measured_peak` against `run_peak[dtype]` (a
  matrix product measured in this run) or else the figure recorded for this kind of machine.
  """
  flops = {(r["case"], r["batch"], r["dtype"]): r["gflop_per_step"] for r in rows
           if is_jax(r) and r["steps_per_dispatch"] == 1 and "error" not in r}
  for r in rows:
    gflop = flops.get((r["case"], r["batch"], r["dtype"]))
    if gflop is None:
      gflop = (counted or {}).get(f"{r['case']}/{r['batch']}/{r['dtype']}")
    r["xla_gflop_per_step"] = gflop
    r["peak_tflops"] = peak_tflops(device_kind, r["dtype"])
    r["measured_peak_tflops"] = ((run_peak or {}).get(r["dtype"])
                                 or measured_peak_tflops(device_kind, r["dtype"]))
    for key, peak in (("pct_of_peak", r["peak_tflops"]),
                      ("pct_of_measured_peak", r["measured_peak_tflops"])):
      r[key] = (None if gflop is None or peak is None or "error" in r
                else 100.0 * gflop * 1e9 / (r["ms_per_step"] / 1e3) / (peak * 1e12))


def is_jax(row: dict) -> bool:
  """A JAX row: framework "jax", or a `--jax-label` variant (which starts with "jax")."""
  return row["framework"].startswith("jax")


def _fmt(v, spec: str) -> str:
  return "n/a" if v is None else format(v, spec)


# The targets of issue 10 (one H100, CIFAR-100 shapes, bf16, batch 128 for speed), reported here
# against the rows, never asserted.
TARGET_PDND_IMAGES_PER_S = 25_000
TARGET_VS_TORCH = {"torch eager": 1.5, "torch.compile": 1.0, "torch.compile cudagraphs": 1.0}
TARGET_LEAN_VS_KD = 0.6


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
  met = value >= target if higher_is_better else value <= target
  return "met" if met else f"missed by {abs(value / target - 1) * 100:.0f}%"


def targets(rows: list[dict]) -> list[str]:
  """The issue's targets, read off the rows (reported, not asserted). Verdicts only for the
  shapes a target names (bf16, batch 128 for speed); other rows are listed without one."""
  index = {(r["framework"], r["case"], r["batch"], r["dtype"], r["steps_per_dispatch"]): r
           for r in rows if "error" not in r}
  lines = []
  for (fw, case, batch, dtype, k), r in sorted(index.items()):
    if not is_jax(r) or k != 1 or CASES[case].method != "pdnd":
      continue
    judged = dtype == "bfloat16" and batch == 128
    name = case if fw == "jax" else f"{case} ({fw})"
    parts = [f"{name} batch {batch} {dtype}: {r['images_per_s']:,.0f} images/s"
             + (f" ({_verdict(r['images_per_s'], TARGET_PDND_IMAGES_PER_S)}: "
                f">= {TARGET_PDND_IMAGES_PER_S:,})" if judged else "")]
    for other, target in TARGET_VS_TORCH.items():
      t = index.get((other, case, batch, dtype, 1))
      if t is not None:
        ratio = r["images_per_s"] / t["images_per_s"]
        parts.append(f"{ratio:.2f}x {other}"
                     + (f" ({_verdict(ratio, target)}: >= {target}x)" if judged else ""))
    lines.append("- " + ", ".join(parts))
  for (fw, case, batch, dtype, k), r in sorted(index.items()):
    kd = index.get((fw, "kd", batch, dtype, 1))
    spec = CASES[case]
    memory_case = case == "dnd" or spec.memory_lean or spec.remat
    if not (is_jax(r) and memory_case and k == 1 and kd and r["peak_mib"] and kd["peak_mib"]):
      continue
    ratio = r["peak_mib"] / kd["peak_mib"]
    # the target names memory-lean DnD; the other rows show what each switch does on its own
    judged = spec.method == "dnd" and spec.memory_lean
    switches = [name for name, on in (("memory-lean", spec.memory_lean), ("remat", spec.remat))
                if on]
    what = {"kd": "KD", "dnd": "DnD"}[spec.method] + (f" ({', '.join(switches)})" if switches
                                                       else "")
    dnd = (index.get((fw, "dnd", batch, dtype, 1)) if spec.method == "dnd" and case != "dnd"
           else None)
    lines.append(
        f"- {what} batch {batch} {dtype}{'' if fw == 'jax' else f' ({fw})'}: peak "
        f"{r['peak_mib']:.1f} MiB = {ratio:.2f}x vanilla KD's ({kd['peak_mib']:.1f} MiB"
        + (f"; {_verdict(ratio, TARGET_LEAN_VS_KD, higher_is_better=False)}: "
           f"<= {TARGET_LEAN_VS_KD}x" if judged else "")
        + ")" + (f", {r['peak_mib'] / dnd['peak_mib']:.2f}x default DnD's" if dnd else "")
        + f"; temporaries {r['temp_mib'] / kd['temp_mib']:.2f}x KD's")
  return lines


def _network(meta: dict, role: str) -> str:
  """"ResNet34", or a named network with its family keyword arguments: "shufflev2 {...}"."""
  arch = meta.get(f"{role}_arch")
  if not arch:
    return f"ResNet{meta.get('teacher_depth', TEACHER_DEPTH)}" if role == "teacher" else "ResNet18"
  kwargs = meta.get(f"{role}_arch_kwargs")
  return f"{arch} {json.dumps(kwargs)}" if kwargs else arch


def markdown(result: dict) -> str:
  meta = result["meta"]
  run_peak = meta.get("measured_matmul_tflops")
  lines = [
      f"Device: {meta['device_count']} x {meta['device_kind']} ({meta['backend']}); "
      f"host {meta['host']} ({meta['cpu_affinity']} usable by this run); {meta['date']}",
      f"Shapes: {_network(meta, 'teacher')} teacher -> {_network(meta, 'student')} student, "
      f"width {meta['width']}, "
      f"{meta['image_size']}x{meta['image_size']}x3 synthetic uint8 images, "
      f"{meta['num_classes']} classes, {meta['dataset_size']} resident images; "
      f"{meta['warmup']} warm-up + {meta['steps']} timed steps.",
      f"Versions: jax {meta['jax']}, jaxlib {meta['jaxlib']}, flax {meta['flax']}, "
      f"torch {meta['torch']}; Python {meta['python']}. Compilation cache: "
      f"{meta.get('compilation_cache') or 'off'}.",
      "Peaks: % of the data sheet's dense peak, and of the measured one ("
      + (f"an {meta['measured_matmul_n']}^3 bf16 matrix product in this run: "
         f"{run_peak:,.4g} TFLOP/s" if run_peak else
         "MEASURED_PEAK_TFLOPS, recorded on the lent H100/H200; n/a elsewhere") + ").",
      *[f"Command: `{c}`" for c in meta.get("commands", [meta.get("command", "")])],
      *([f"FLOP counts recounted {meta['flops_recounted']} (`--recount-flops`)."]
        if meta.get("flops_recounted") else []),
      "",
      "images/s and ms/step: steps dispatched back to back (what an epoch sees); synced: each "
      "step waited for on its own.",
      "",
      "| method | batch | dtype | framework | compile s | ms/step | images/s | synced ms/step | "
      "host ms/step | peak MiB | temp MiB | GFLOP/step (XLA) | % of peak (sheet) | "
      "% of peak (measured) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    fw = r["framework"] + (f" x{r['steps_per_dispatch']}/dispatch"
                           if r["steps_per_dispatch"] > 1 else "")
    if not r.get("loss_finite", True):
      fw += " (loss not finite!)"
    if "error" in r:
      lines.append(f"| {r['case']} | {r['batch']} | {r['dtype']} | {fw} | error: "
                   f"{r['error'][:80]} | | | | | | | | | |")
      continue
    lines.append(
        f"| {r['case']} | {r['batch']} | {r['dtype']} | {fw} | {_fmt(r['compile_s'], '.1f')} | "
        f"{r['ms_per_step']:.2f} | {r['images_per_s']:,.0f} | {r['synced_ms_per_step']:.2f} | "
        f"{r['host_ms_per_step']:.3f} | {_fmt(r['peak_mib'], '.1f')} | "
        f"{_fmt(r['temp_mib'], '.1f')} | {_fmt(r.get('xla_gflop_per_step'), '.2f')} | "
        f"{_fmt(r.get('pct_of_peak'), '.1f')} | {_fmt(r.get('pct_of_measured_peak'), '.1f')} |")
  donated = [r["donated_mib"] for r in result["rows"] if r.get("donated_mib") is not None]
  if donated:
    lines += ["", f"Every JAX step donates its train state and metric sums: XLA updates "
                  f"{min(donated):.2f}-{max(donated):.2f} MiB of its inputs in place."]
  variants = sorted({(r["framework"], " ".join(
      ([f"XLA_FLAGS={r['xla_flags']}"] if r.get("xla_flags") else [])
      + [f"{k}={v}" for k, v in sorted(r.get("xla_options", {}).items())]))
      for r in result["rows"] if r.get("xla_flags") or r.get("xla_options")})
  if variants:
    lines += [""] + [f"Rows of `{fw}` were compiled with `{how}`." for fw, how in variants]
  profiled = [r for r in result["rows"] if r.get("profile") and "error" not in r["profile"]]
  if profiled:
    lines += ["", "Profiles (`--profile-steps`; `dnd_jax.profiling.summarize_trace`): device busy "
                  "is the union of the kernels' time on the device's streams, span the time from "
                  "the first dispatch to the last kernel's end; busy well below span means the "
                  "device waits for the host.", "",
              "| method | batch | dtype | framework | steps traced | ms/step (loop) | span ms/step "
              "| device busy ms/step | busy % of span | kernels/step | kernel launches/step | "
              "graph launches/step | ms/step by op class |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in profiled:
      p = r["profile"]
      busy, span = p.get("device_busy_ms_per_step"), p.get("span_ms_per_step")
      share = 100 * busy / span if busy is not None and span else None
      ops = profiling.op_breakdown(p)
      lines.append(
          f"| {r['case']} | {r['batch']} | {r['dtype']} | {r['framework']} | {p['steps']} | "
          f"{r['ms_per_step']:.2f} | {_fmt(span, '.2f')} | {_fmt(busy, '.2f')} | "
          f"{_fmt(share, '.0f')} | {_fmt(p.get('device_kernels_per_step'), '.0f')} | "
          f"{_fmt(p.get('kernel_launches_per_step'), '.0f')} | "
          f"{_fmt(p.get('graph_launches_per_step'), '.0f')} | {ops or 'n/a'} |")
  lines += ["", "Targets (issue 10, one H100; reported, not asserted):", ""]
  lines += targets(result["rows"]) or ["- none"]
  return "\n".join(lines) + "\n"


def write_outputs(out: str, result: dict) -> str:
  """<out>/benchmark.json and <out>/benchmark.md for the rows so far; returns the markdown."""
  add_flop_shares(result["rows"], result["meta"]["device_kind"],
                  {"bfloat16": result["meta"].get("measured_matmul_tflops")},
                  result["meta"].get("gflop_per_step"))
  os.makedirs(out, exist_ok=True)
  run_folder.write_atomic(os.path.join(out, JSON_FILE), json.dumps(result, indent=2))
  text = markdown(result)
  run_folder.write_atomic(os.path.join(out, MARKDOWN_FILE), text)
  return text
