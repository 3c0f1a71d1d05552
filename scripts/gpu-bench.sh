#!/usr/bin/env bash
# Runs on the GPU machine (copied into gpu-bundle/ by scripts/gpu-check.sh): `hbridge bench` on the tiny
# model and on hbridge-7b4b (random weights written to local disk first if absent, ~23 GB, ~90 s), with
# the table and JSON under $OUT. The hbridge-7b4b run adds `--profile`: the prefill, decode step and gen
# step (cond branch) timed node by node, ranked by op kind against the ceilings of the same run. The
# PyTorch baseline on the same checkpoint: scripts/gpu-torch.sh.
#   bash gpu-bundle/run-bench.sh [--with-torch] [extra hbridge bench args]
# --with-torch: then the PyTorch baseline on the same checkpoint and GPU (run-torch.sh), printed side by
# side with hbridge's numbers and their ratios: the whole comparison from one command.
set -uo pipefail
with_torch=0
[ "${1:-}" = "--with-torch" ] && { with_torch=1; shift; }
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$bundle")"
logs="${OUT:-$bundle/logs}"
mkdir -p "$logs"
bin="$bundle/bin/hbridge"
model="${HBRIDGE_7B4B_DIR:-/tmp/hbridge-7b4b}"
source "$bundle/env.sh"
echo "== hbridge bench tiny (cuda)"
"$bin" --device cuda bench "$repo/tests/fixtures/tiny/model" --prompt-len 32 --context 256 --decode-tokens 16 \
  --size 256 --steps 10 --json "$logs/bench-tiny.json" 2>&1 | tee "$logs/bench-tiny.log" | grep -v '^bench:'
if [ ! -f "$model/hbridge.json" ]; then
  echo "== writing hbridge-7b4b to $model"
  "$bin" init "$model" --config hbridge-7b4b --force 2>&1 | grep -v '^  ' | tail -2
fi
echo "== hbridge bench hbridge-7b4b (cuda)"
"$bin" --device cuda bench "$model" --profile --json "$logs/bench-7b4b.json" "$@" 2>&1 | tee "$logs/bench-7b4b.log" \
  | grep -v '^uploading'
# The opt-in kernels (attention v2 on wgmma, the decode GEMV): the same workloads, 5 denoising steps for
# the time-to-image row (the gen step row is the per-step comparison).
echo "== hbridge bench hbridge-7b4b (cuda, HBRIDGE_ATTENTION=sm90 HBRIDGE_GEMV=1)"
HBRIDGE_ATTENTION=sm90 HBRIDGE_GEMV=1 "$bin" --device cuda bench "$model" --steps 5 --profile \
  --json "$logs/bench-7b4b-sm90-gemv.json" "$@" 2>&1 | tee "$logs/bench-7b4b-sm90-gemv.log" | grep -v '^uploading'
# The gen step with every guidance branch running its whole step (no shared prefix), for the A/B of
# the prefix the branches share (the default).
echo "== hbridge bench hbridge-7b4b (cuda, HBRIDGE_SHARED_PREFIX=0)"
HBRIDGE_SHARED_PREFIX=0 "$bin" --device cuda bench "$model" --steps 2 --runs 3 \
  --json "$logs/bench-7b4b-no-shared-prefix.json" "$@" 2>&1 | tee "$logs/bench-7b4b-no-shared-prefix.log" \
  | grep -v '^uploading'
# Every node launched on its own (no norm + modulation / gated-residual fusion), for its A/B.
echo "== hbridge bench hbridge-7b4b (cuda, HBRIDGE_FUSE=0)"
HBRIDGE_FUSE=0 "$bin" --device cuda bench "$model" --steps 2 --runs 3 \
  --json "$logs/bench-7b4b-no-fuse.json" "$@" 2>&1 | tee "$logs/bench-7b4b-no-fuse.log" | grep -v '^uploading'
if [ "$with_torch" = 1 ]; then
  bash "$bundle/run-torch.sh"
fi
