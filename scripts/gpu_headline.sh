#!/usr/bin/env bash
# The paper's headline on a GPU (issue 11), at full width (ResNet34 64 -> ResNet18 64):
#
#   bash scripts/gpu_headline.sh a      # the main command's wall clock (random-pixel CIFAR-100)
#   bash scripts/gpu_headline.sh b      # real Fashion-MNIST: teacher, then KD/DnD/PDnD x 3 budgets
#   bash scripts/gpu_headline.sh        # a, then b with what is left of the 9-minute budget
#
# a  writes a data set in the official CIFAR-100 python format with random pixels (accuracy is
#    chance, wall time is the figure), trains the teacher for 1 epoch (reported apart), then runs
#    the user's `python scripts/train.py --config configs/pdnd_cifar.py` (60 epochs), vanilla KD
#    (configs/kd_cifar.py) for KD_EPOCHS epochs (time per epoch x 200 = the paper's KD budget),
#    and PDnD again for 1 epoch, whose compile time then comes from the persistent cache.
# b  trains the Fashion-MNIST teacher once (carried in data/fashion-mnist, git-ignored; on a
#    machine with Debian's dataset-fashion-mnist it is read from /usr/share/datasets), then KD, DnD
#    and Progressive DnD (FASHION_METHODS) at each budget of FASHION_BUDGETS, cheapest first.
# Every run is the ordinary `scripts/train.py` in a fresh workdir under $GPU_WORK, under its own
# time limit; after each one, scripts/gpu/record_run.py adds it (process wall clock plus its whole
# summary.json) to $OUT/headline.json, .csv and .md. Exit 3 when a part's teacher could not be
# trained (nothing else of the part can run); other codes: scripts/gpu/common.sh. GPU_TOY=1:
# toy sizes (the CPU test). GPU_HEADLINE_FLAGS: extra config flags for every run (e.g.
# "--config.model.dtype=bfloat16"). Files back: env.txt, headline.{json,csv,md},
# gpu_headline.log, fashion_budgets.png.

GPU_SCRIPT=gpu_headline
source "$(dirname "${BASH_SOURCE[0]}")/gpu/common.sh"

PARTS=${1:-a,b}
WORK=${GPU_WORK:-/tmp/dnd_gpu_headline}
FASHION_DIR=${GPU_FASHION_DIR:-data/fashion-mnist}
if [ ! -d "$FASHION_DIR" ] && [ -d /usr/share/datasets/fashion-mnist ]; then
  FASHION_DIR=/usr/share/datasets/fashion-mnist
fi
if [ "$GPU_TOY" = 1 ]; then
  # 32 training images, one batch: the plumbing plus real steps, and Progressive DnD's one
  # epoch is one step, so it compiles one partition's step (of 256 images, all three: ~20 s more
  # on 2 CPU cores, testing nothing more); the OneCycle runs (teacher, KD) need 2 steps, 2 epochs
  FAKE_SIZE=(--train 32 --test 64)
  # ResNet18 teachers, as the suite's other tiny runs (a ResNet34 compiles about 1.7x the
  # convolutions, and the plumbing does not depend on the teacher's depth)
  SIZE=(--config.model.width=4 --config.teacher.width=4 --config.data.image_size=8
        --config.model.depth=18 --config.teacher.depth=18
        --config.batch_size=32 --config.log.progress_bar=False)
  FAKE_EVAL=(--config.eval_batch_size=64)
  # tests/conftest.py's tiny_config on Fashion-MNIST: in the CPU test, the suite's shared
  # compilation cache then holds these runs' programs already (the suite's tiny runs compiled them)
  FASHION_SIZE=(--config.data.fraction=0.05 --config.eval_batch_size=1000)
  # the runs that differ from the real ones only in size: no cached PDnD rerun (PDnD runs 1
  # epoch already), one Fashion-MNIST student (each compile takes long on a CPU)
  PDND_EPOCHS=(--config.num_epochs=1) KD_EPOCHS=2 CIFAR_TEACHER_EPOCHS=2
  FASHION_TEACHER_EPOCHS=1 CACHED_RERUN=0
  FASHION_BUDGETS=${FASHION_BUDGETS:-1} FASHION_METHODS=${FASHION_METHODS:-kd}
else
  # Estimates for an H100 in fp32 (TF32), not measurements: a full-width teacher epoch on 50,000
  # images 10-20 s after a 30-60 s compile; a PDnD or KD epoch 3-6 s; the 60-epoch PDnD run
  # 3-6 minutes end to end (the target is 4); a Fashion-MNIST epoch about as long as CIFAR's.
  FAKE_SIZE=() SIZE=() FAKE_EVAL=() FASHION_SIZE=() PDND_EPOCHS=()
  KD_EPOCHS=${KD_EPOCHS:-5} CIFAR_TEACHER_EPOCHS=1 FASHION_TEACHER_EPOCHS=${FASHION_TEACHER_EPOCHS:-5} CACHED_RERUN=1
  FASHION_BUDGETS=${FASHION_BUDGETS:-1 2 4} FASHION_METHODS=${FASHION_METHODS:-kd dnd pdnd}
fi
# shellcheck disable=SC2206
FLAGS=(${GPU_HEADLINE_FLAGS:-})

# train_run PART NAME LIMIT_S NOTE ARGS...: scripts/train.py ARGS in a fresh $WORK/runs/NAME,
# then recorded in $OUT; returns train.py's exit code.
train_run() {
  local part=$1 name=$2 limit=$3 note=$4 workdir=$WORK/runs/$2 rc t0 wall
  shift 4
  rm -rf "$workdir"
  local cmd=("$PY" scripts/train.py --workdir "$workdir" "$@" "${SIZE[@]}" "${FLAGS[@]}")
  t0=$(date +%s%N)
  gpu_part "$name" "$limit" "${cmd[@]}"
  rc=$?
  wall=$(( ($(date +%s%N) - t0) / 1000000 ))
  "$PY" scripts/gpu/record_run.py --out "$OUT" --part "$part" --name "$name" \
    --workdir "$workdir" --rc "$rc" --wall "$((wall / 1000)).$(printf %03d $((wall % 1000)))" \
    --note "$note" -- "${cmd[@]:1}" >>"$LOG" 2>&1 || gpu_log "could not record $name"
  return $rc
}

part_a() {
  local data=$WORK/fake_cifar100 teacher=$WORK/runs/teacher_cifar/model
  local on_data=(--config.data.dir="$data" --config.data.verify_checksums=False
                 --config.data.cache_dir="$WORK/data_cache" "${FAKE_EVAL[@]}")
  rm -rf "$data" "$WORK/data_cache"
  gpu_part fake_cifar100 60 "$PY" scripts/make_fake_cifar100.py "$data" "${FAKE_SIZE[@]}" \
    || { gpu_log "error: could not write the random-pixel CIFAR-100"; exit 3; }
  train_run a teacher_cifar 120 "$CIFAR_TEACHER_EPOCHS epoch$([ "$CIFAR_TEACHER_EPOCHS" = 1 ] || echo s), only to give the students a teacher" \
    --config configs/teacher_cifar.py --config.num_epochs="$CIFAR_TEACHER_EPOCHS" "${on_data[@]}" \
    || { gpu_log "error: the CIFAR-100 teacher could not be trained: part a stops; see $LOG"; exit 3; }
  local students=("${on_data[@]}" --config.teacher.checkpoint="$teacher")
  train_run a pdnd_cifar 300 "the main command, 60 epochs" \
    --config configs/pdnd_cifar.py "${PDND_EPOCHS[@]}" "${students[@]}"
  train_run a kd_cifar 120 "per-epoch time x 200 = the paper's KD budget" \
    --config configs/kd_cifar.py --config.num_epochs="$KD_EPOCHS" "${students[@]}"
  [ "$CACHED_RERUN" = 1 ] && train_run a pdnd_cifar_cached 60 "1 epoch after pdnd_cifar: compile time from the cache" \
    --config configs/pdnd_cifar.py --config.num_epochs=1 "${students[@]}"
}

part_b() {
  local teacher=$WORK/runs/teacher_fashion/model budget method
  if [ ! -d "$FASHION_DIR" ]; then
    gpu_log "error: no Fashion-MNIST in $FASHION_DIR: copy /usr/share/datasets/fashion-mnist/*.gz there and name data/fashion-mnist in the run's carry list (docs/development.md)"
    exit 3
  fi
  # decoded arrays in the default cache (~/.cache/dnd_jax), which the CPU tests share
  local on_data=(--config.data.dir="$FASHION_DIR" "${FASHION_SIZE[@]}")
  train_run b teacher_fashion 150 "trained once for every student" \
    --config configs/teacher_fashion.py --config.num_epochs="$FASHION_TEACHER_EPOCHS" \
    "${on_data[@]}" \
    || { gpu_log "error: the Fashion-MNIST teacher could not be trained: part b stops; see $LOG"; exit 3; }
  for budget in $FASHION_BUDGETS; do
    for method in $FASHION_METHODS; do
      train_run b "${method}_fashion_e$budget" 120 "" --config "configs/${method}_fashion.py" \
        --config.num_epochs="$budget" "${on_data[@]}" --config.teacher.checkpoint="$teacher"
    done
  done
}

gpu_install_wheels
gpu_record_env "$@"
mkdir -p "$WORK"
case ",$PARTS," in *,a,*) part_a ;; esac
case ",$PARTS," in *,b,*) part_b ;; esac
[ -f "$OUT/headline.md" ] && cat "$OUT/headline.md"
gpu_finish
