#!/usr/bin/env bash
# The speed benchmark on a GPU in one command of at most 9 minutes (issue 10):
#
#   bash scripts/gpu_bench.sh           # parts a, b, c
#   bash scripts/gpu_bench.sh c,b       # only the named parts (always in the order a, b, c, e, d)
#
# Parts, in priority order, each under its own time limit, all appending to one
# $OUT/benchmark.json and benchmark.md that are rewritten after every row:
#   a  bf16, batch 128, CIFAR-100 shapes, full width: every Progressive-DnD partition, DnD and KD,
#      each beside PyTorch eager (AMP, channels_last) of the same step; first a bf16 matrix
#      product measures the card's practical peak
#   b  the same Progressive-DnD and KD steps in torch.compile, default mode and CUDA graphs
#   c  batch 512, peak memory: KD, DnD and memory-lean DnD, the two DnD steps also with
#      rematerialised blocks (config.model.remat); XLA's buffer assignment and memory-usage
#      report of every step come back as xla_memory.tgz (what is alive at the peak)
#   e  (only when asked) where the JAX steps' time goes: Progressive DnD partitions 2 and 1, DnD
#      and KD at batch 128, each traced for PROFILE_STEPS steps with jax.profiler (device busy
#      time against the step's span, kernels and launches per step, ms by op class), once as the
#      trainer compiles them (XLA's own CUDA-graph list: dnd_jax.runtime) and once with the
#      convolutions in the graphs too (CONV_GRAPHS below, a compile option of the timed steps;
#      rows labelled "jax conv-graphs"); the traces, each beside its step's optimised HLO (what the
#      traces' op names compute), come back as traces.tgz
#   d  (only when asked) Progressive DnD and KD at batch 128, each once per dispatch and 4 steps
#      per dispatch (lax.scan): whether the host's dispatch is what limits the JAX rows (the
#      2026-11-26 H200 run showed host ms/step about equal to ms/step)
# Exit 3 when part a wrote no row: a broken setup costs about a minute. Other codes and the
# environment variables: scripts/gpu/common.sh. Sizes: GPU_TOY=1 shrinks everything (the CPU
# test); GPU_BENCH_ARGS adds benchmark flags to every part (e.g. "--steps 100").
# Files back: env.txt, benchmark.json, benchmark.md, gpu_bench.log, xla_memory.tgz after part c,
# traces.tgz after part e.

GPU_SCRIPT=gpu_bench
source "$(dirname "${BASH_SOURCE[0]}")/gpu/common.sh"

PARTS=${1:-a,b,c}

# Most of the GPU to JAX, the rest to the PyTorch rows of the same process (JAX would otherwise
# take 75% up front). Peak memory is XLA's compile-time figure, which this does not change.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}

if [ "$GPU_TOY" = 1 ]; then
  # The CPU test: the same parts and files, one or two cases each; torch.compile takes minutes
  # on a CPU, so part b's PyTorch rows are eager there. Part d repeats part a's case, whose
  # single-step program then comes from the compilation cache.
  # (a ResNet18 teacher: the plumbing does not depend on its depth, and it compiles faster)
  SHAPES=(--width 4 --image-size 8 --dataset-size 32 --steps 2 --warmup 1 --teacher-depth 18)
  BATCH_A=8 BATCH_C=16 PEAK_N=64
  METHODS_A=pdnd_p3 METHODS_B=kd TORCH_B=eager METHODS_C=dnd_lean_remat METHODS_D=pdnd_p3
  METHODS_E=pdnd_p3 PROFILE_STEPS=2
else
  # 50,000 resident images as in CIFAR-100; 50 timed steps of each kind per row
  SHAPES=(--width 64 --image-size 32 --dataset-size 50000 --steps 50 --warmup 5)
  BATCH_A=128 BATCH_C=512 PEAK_N=8192
  METHODS_A=pdnd_p1,pdnd_p2,pdnd_p3,dnd,kd METHODS_B=pdnd_p3,kd,pdnd_p1,pdnd_p2
  TORCH_B=compile,cudagraphs METHODS_C=kd,dnd,dnd_lean,dnd_remat,dnd_lean_remat
  METHODS_D=pdnd_p3,kd
  METHODS_E=pdnd_p2,pdnd_p1,dnd,kd PROFILE_STEPS=5
fi
# Part e's variant: the trainer's CUDA-graph commands (XLA's own list, dnd_jax.runtime.
# GPU_COMMAND_BUFFER) plus the convolutions, so that a step is one CUDA graph
# (runtime.GPU_COMMAND_BUFFER_CONVOLUTION; not the trainer's default, as cuDNN may refuse to be
# captured). The option is checked on any backend (the CPU test passes it too) and recorded in
# each row.
CONV_GRAPHS="xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONVOLUTION"
# shellcheck disable=SC2206
EXTRA=(${GPU_BENCH_ARGS:-})
BENCH=("$PY" scripts/benchmark.py "${SHAPES[@]}" --dtypes bfloat16 --out "$OUT")

gpu_install_wheels
gpu_record_env "$@"

# Estimates for an H100 (not measured): five XLA compiles of 20-40 s each dominate part a; each
# torch.compile of part b takes 30-60 s. Part c: three rows took 46 s on the H200 (2026-11-26), so
# its five about 80 s; its steps compile past the cache (for XLA's dump).
part_a() {
  gpu_part a 240 "${BENCH[@]}" --methods "$METHODS_A" --batch-sizes "$BATCH_A" \
    --torch eager --measure-peak "$PEAK_N" --steps-per-dispatch 1 "${EXTRA[@]}"
  if ! "$PY" - "$OUT/benchmark.json" <<'EOF'
import json, sys
try:
  rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError):
  rows = []
sys.exit(0 if any("error" not in r for r in rows) else 1)
EOF
  then
    gpu_log "error: part a produced no row: the setup is broken; see $LOG"
    tail -n 40 "$LOG"
    exit 3
  fi
}

case ",$PARTS," in *,a,*) part_a ;; esac
# --append: to the rows of an earlier part in this $OUT (a fresh table when there are none)
case ",$PARTS," in *,b,*)
  gpu_part b 190 "${BENCH[@]}" --methods "$METHODS_B" --batch-sizes "$BATCH_A" --no-jax \
    --torch "$TORCH_B" --steps-per-dispatch 1 --append "${EXTRA[@]}" ;;
esac
case ",$PARTS," in *,c,*)
  gpu_part c 150 "${BENCH[@]}" --methods "$METHODS_C" --batch-sizes "$BATCH_C" --torch none \
    --steps-per-dispatch 1 --xla-dump --append "${EXTRA[@]}"
  # a few MiB of text per step before compression; the reports alone if that is still too much
  if [ -d "$OUT/xla_dump" ]; then
    (cd "$OUT" && tar czf xla_memory.tgz xla_dump)
    if [ "$(stat -c %s "$OUT/xla_memory.tgz")" -gt $((8 * 1024 * 1024)) ]; then
      gpu_log "xla_memory.tgz is over 8 MiB: kept the memory-usage reports only"
      (cd "$OUT" && find xla_dump -name '*memory-usage-report.txt' -print0 \
         | tar czf xla_memory.tgz --null -T -)
    fi
    rm -rf "$OUT/xla_dump"
  fi
  ;;
esac
case ",$PARTS," in *,e,*)
  PROFILED=("${BENCH[@]}" --methods "$METHODS_E" --batch-sizes "$BATCH_A" --torch none
            --steps-per-dispatch 1 --profile-steps "$PROFILE_STEPS" --append "${EXTRA[@]}")
  gpu_part e 120 "${PROFILED[@]}"
  gpu_part e_conv_graphs 120 "${PROFILED[@]}" --xla-option "$CONV_GRAPHS" \
    --jax-label "jax conv-graphs"
  # the Perfetto traces (the .xplane.pb files hold the same) and each step's optimised HLO (what
  # the traces' op names refer to), in one file of <= 16 MiB; the traces alone if that is too much
  if [ -d "$OUT/traces" ]; then
    (cd "$OUT" && find traces \( -name '*.trace.json.gz' -o -name 'step.hlo.txt' \) -print0 \
       | tar czf traces.tgz --null -T -)
    if [ "$(stat -c %s "$OUT/traces.tgz")" -gt $((16 * 1024 * 1024)) ]; then
      gpu_log "traces.tgz with the HLO is over 16 MiB: kept the traces only"
      (cd "$OUT" && find traces -name '*.trace.json.gz' -print0 | tar czf traces.tgz --null -T -)
    fi
    rm -rf "$OUT/traces"
    if [ "$(stat -c %s "$OUT/traces.tgz")" -gt $((16 * 1024 * 1024)) ]; then
      gpu_log "traces.tgz is over 16 MiB (it would not come back): removed; benchmark.json has each trace's summary"
      rm -f "$OUT/traces.tgz"
    fi
  fi
  ;;
esac
case ",$PARTS," in *,d,*)
  gpu_part d 120 "${BENCH[@]}" --methods "$METHODS_D" --batch-sizes "$BATCH_A" --torch none \
    --steps-per-dispatch 4 --scan-methods "$METHODS_D" --append "${EXTRA[@]}" ;;
esac
[ -f "$OUT/benchmark.md" ] && cat "$OUT/benchmark.md"
gpu_finish
