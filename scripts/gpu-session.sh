#!/usr/bin/env bash
# A whole GPU session's checks in one call (copied into gpu-bundle/session.sh by scripts/gpu-check.sh).
# A lent GPU comes with ~15 minutes of device time, start-up included, and goes back 30 s after a call
# ends: so everything runs here, most important first, each stage under its own cap and the whole
# under DEADLINE seconds, with the logs re-packed into $OUT after every stage (a call cut off at its
# limit still returns what finished).
#
# Order: the hbridge-7b4b checkpoint is written in the background from t = 0 (CPU and disk only); the
# tests of the default path (every kernel it runs, the model checks); the tiny model's bench (replay vs
# eager of the decode and gen steps) and hbridge-7b4b's bench with --profile, the headline numbers; the
# tests of the opt-in paths (wgmma attention v2 and v3, GEMV, PDL, timed GEMM algorithms); the kernel
# microbenches issue 5 sets targets for (attention, RMSNorm, GEMV) at short criterion windows and torch
# SDPA at the same shapes; the A/B passes (each only the workloads it changes); then, with what time is
# left, ncu on the wgmma attention and torch eager on the gen step.
#   bash gpu-bundle/session.sh [DEADLINE_S]     (default 560: the device tool's 600 s limit, less margin)
set -uo pipefail
deadline=${1:-560}
t0=$(date +%s)
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$bundle")"
out="${OUT:-$bundle/out}"
logs="$bundle/session-logs"
rm -rf "$logs"
mkdir -p "$logs" "$out"
bin="$bundle/bin"
model="${HBRIDGE_7B4B_DIR:-/tmp/hbridge-7b4b}"

source "$bundle/env.sh"
export HBRIDGE_REQUIRE_GPU=1

elapsed() { echo $(( $(date +%s) - t0 )); }
pack() {
  cp "$logs/summary.txt" "$out/summary.txt" 2>/dev/null
  tar czf "$out/logs.tgz.tmp" -C "$bundle" session-logs 2>/dev/null && mv "$out/logs.tgz.tmp" "$out/logs.tgz"
}
note() { echo "$*" | tee -a "$logs/summary.txt"; }

{
  echo "commit: $(cat "$bundle/commit.txt" 2>/dev/null)"
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
  df -h /tmp | tail -1 | sed 's/^/disk: /'
} | tee "$logs/env.txt" | tee -a "$logs/summary.txt"

# stage NAME CAP_S COMMAND...: runs COMMAND (output to NAME.log) for at most min(CAP_S, time left);
# skipped when under 15 s are left. Sets $rc (124: cut off at its cap).
stage() {
  local name=$1 cap=$2
  shift 2
  local left=$(( deadline - $(elapsed) - 5 ))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 15 ]; then
    note "$(printf '%-34s SKIPPED (%ss left)' "$name" "$left")"
    rc=125
    return
  fi
  local start
  start=$(date +%s)
  timeout -k 5 "$cap" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  local extra=""
  if grep -q '\.\.\. ok$\|\.\.\. FAILED$' "$logs/$name.log"; then
    extra="passed $(grep -c '\.\.\. ok$' "$logs/$name.log") failed $(grep -c '\.\.\. FAILED$' "$logs/$name.log")"
  fi
  note "$(printf '%-34s rc %-3s %4ss (cap %ss, at %ss) %s' "$name" "$rc" "$(( $(date +%s) - start ))" "$cap" "$(elapsed)" "$extra")"
  grep -E '\.\.\. FAILED$|panicked|^error' "$logs/$name.log" | head -8 | sed 's/^/    /' | tee -a "$logs/summary.txt"
  pack
}

# The checkpoint, in the background: CPU and disk work that overlaps the tests.
if [ ! -f "$model/hbridge.json" ]; then
  ( /usr/bin/time -v "$bin/hbridge" init "$model" --config hbridge-7b4b --force > "$logs/7b4b-init.log" 2>&1 ) &
  init_pid=$!
else
  init_pid=""
fi

# 1. The default path (the kernels every run uses, the model checks): the headline bench needs it.
stage nvrtc_compile 60 "$bin/test-nvrtc_compile" --test-threads=1 --nocapture
stage cuda_kernels 120 "$bin/test-cuda_kernels" --test-threads=1 --nocapture --skip attention_sm90
kernels_rc=$rc
stage cuda_model 90 "$bin/test-cuda_model" --test-threads=1 --nocapture
stage app_tests_on_cuda 90 bash -c "for t in t2i edit vision engine_api chat_session; do '$bin/test-'\$t --test-threads=1 --nocapture on_cuda || exit 1; done"

# 2. Issue 4 item 5 on the tiny model (decode and gen step replay vs eager), then hbridge-7b4b end to
# end (waits for the checkpoint).
stage bench_tiny 40 "$bin/hbridge" --device cuda bench "$repo/tests/fixtures/tiny/model" --prompt-len 32 \
  --context 256 --decode-tokens 16 --size 256 --steps 10 --json "$logs/bench-tiny.json"
if [ -n "$init_pid" ]; then
  wait "$init_pid"
  note "7b4b init: $(grep -E 'wrote|Elapsed' "$logs/7b4b-init.log" | tr '\n' ' ') (done at $(elapsed)s)"
fi
stage bench_7b4b 150 "$bin/hbridge" --device cuda bench "$model" --profile --json "$logs/bench-7b4b.json"

# 3. The opt-in paths. The wgmma attention tests on their own stage: a hang or fault there cannot cost
# the other kernel tests.
stage cuda_kernels_sm90 90 "$bin/test-cuda_kernels" --test-threads=1 --nocapture attention_sm90
[ "$rc" = 0 ] || kernels_rc=$rc
# -all: the tiny models' heads (12-24 wide) would otherwise stay on v1.
stage model_sm90_gemv 90 env HBRIDGE_ATTENTION=sm90-all HBRIDGE_GEMV=1 bash -c \
  "'$bin/test-cuda_model' --test-threads=1 --nocapture && '$bin/test-t2i' --test-threads=1 --nocapture on_cuda"
opt_in_rc=$rc
stage model_sm90pipe 60 env HBRIDGE_ATTENTION=sm90-pipe-all bash -c \
  "'$bin/test-cuda_model' --test-threads=1 --nocapture && '$bin/test-t2i' --test-threads=1 --nocapture on_cuda"
pipe_rc=$rc
# Programmatic dependent launch on every hand-written kernel (the CUDA graphs capture it too), and
# cuBLASLt algorithms timed on each shape's first call.
stage model_pdl_tune 60 env HBRIDGE_PDL=1 HBRIDGE_GEMM_TUNE=1 bash -c \
  "'$bin/test-cuda_model' --test-threads=1 --nocapture && '$bin/test-t2i' --test-threads=1 --nocapture on_cuda"
pdl_rc=$rc

# 4. The kernels issue 5 sets targets for (short criterion windows), torch SDPA at the same shapes.
stage bench_kernels 90 "$bin/bench-kernels" --bench --warm-up-time 0.5 --measurement-time 1.5 \
  'gpu/(attention|rmsnorm|gemv)/'

stage sdpa 40 bash -c "cd '$repo' && PYTHONUNBUFFERED=1 python3 reference/bench_sdpa.py --json '$logs/sdpa.json'"

# 5. The A/B passes.
ab() { # ab NAME CAP ENV...: the gen step (and decode for the GEMV) under other settings
  local name=$1 cap=$2 only=$3
  shift 3
  stage "$name" "$cap" env "$@" "$bin/hbridge" --device cuda bench "$model" --only "$only" --runs 3 \
    --json "$logs/$name.json"
}
if [ "$kernels_rc" = 0 ] && [ "$opt_in_rc" = 0 ]; then
  ab bench_7b4b_sm90_gemv 60 gen-step,decode HBRIDGE_ATTENTION=sm90 HBRIDGE_GEMV=1
else
  note "bench_7b4b_sm90_gemv               not run: a kernel or opt-in model test failed"
fi
if [ "$kernels_rc" = 0 ] && [ "$pipe_rc" = 0 ]; then
  ab bench_7b4b_sm90pipe 45 gen-step HBRIDGE_ATTENTION=sm90-pipe
fi
if [ "$pdl_rc" = 0 ]; then
  ab bench_7b4b_pdl 60 decode,gen-step HBRIDGE_PDL=1
  ab bench_7b4b_gemm_tune 60 prefill,gen-step HBRIDGE_GEMM_TUNE=1
fi
ab bench_7b4b_no_fuse 45 gen-step HBRIDGE_FUSE=0
ab bench_7b4b_no_shared_prefix 45 gen-step HBRIDGE_SHARED_PREFIX=0

# 6. Whatever time is left: ncu on the new attention kernel, then torch eager on the gen step.
stage ncu_attention_sm90 90 bash "$bundle/run-ncu.sh" "bridge.*sm90"
cp "$out"/ncu-*.txt "$logs/" 2>/dev/null && rm -f "$out"/ncu-*.txt
stage torch_eager_gen_step 120 bash -c "cd '$repo' && PYTHONUNBUFFERED=1 python3 reference/bench_torch.py '$model' \
  --device cuda --mode eager --only gen_step_ms --json '$logs/torch-eager.json' --compare '$logs/bench-7b4b.json'"
note "done at $(elapsed)s"
pack
