#!/usr/bin/env bash
# Both GPU measurements in ONE device command (a lent GPU gives 15 minutes in all, start
# included, and at most 10 per command):
#
#   bash scripts/gpu_all.sh
#
# runs scripts/gpu_bench.sh (parts GPU_ALL_BENCH_PARTS, default a: every step beside PyTorch
# eager) in GPU_ALL_BENCH_S seconds, then scripts/gpu_headline.sh (parts GPU_ALL_HEADLINE_PARTS,
# default a: the main command's wall clock) in GPU_ALL_HEADLINE_S seconds, the two sharing one
# compilation cache. The two scripts' files would be nine, one more than come back from the device
# machine, so they are gathered into seven under $OUT: env.txt, benchmark.{json,md},
# headline.{json,csv,md} and logs.tgz (both logs and anything else they wrote, such as part c's
# xla_memory.tgz), and an eighth, traces.tgz, when the bench's part e ran.
# Exit code: the larger of the two scripts' (scripts/gpu/common.sh lists them).

set -u -o pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FINAL=${OUT:-$REPO/runs/gpu_out/gpu_all}
mkdir -p "$FINAL"
PARTS_DIR=$(mktemp -d)

# gather: the files so far into $FINAL; run after each script, so that what the bench measured
# comes back even if the device's limit cuts the headline off
gather() {
  for f in bench/env.txt bench/benchmark.json bench/benchmark.md headline/headline.json \
           headline/headline.csv headline/headline.md bench/traces.tgz; do
    [ -f "$PARTS_DIR/$f" ] && cp "$PARTS_DIR/$f" "$FINAL/"
  done
  tar czf "$FINAL/logs.tgz" --exclude=./bench/traces.tgz -C "$PARTS_DIR" .
}

OUT=$PARTS_DIR/bench GPU_BUDGET_S=${GPU_ALL_BENCH_S:-210} \
  bash "$REPO/scripts/gpu_bench.sh" "${GPU_ALL_BENCH_PARTS:-a}"
bench_rc=$?
gather
OUT=$PARTS_DIR/headline GPU_BUDGET_S=${GPU_ALL_HEADLINE_S:-360} \
  bash "$REPO/scripts/gpu_headline.sh" "${GPU_ALL_HEADLINE_PARTS:-a}"
headline_rc=$?

gather
echo "== gpu_all: gpu_bench exit $bench_rc, gpu_headline exit $headline_rc; files in $FINAL"
ls -l "$FINAL"
exit $(( bench_rc > headline_rc ? bench_rc : headline_rc ))
