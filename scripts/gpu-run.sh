#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (copied into gpu-bundle/run.sh by scripts/gpu-check.sh):
# every GPU test executable with HBRIDGE_REQUIRE_GPU=1 (a skip is a failure), then the benches.
# Logs go to gpu-bundle/logs, packed into $OUT/logs.tgz (the device tool returns at most 8 files) with
# $OUT/summary.txt; the summary table is printed last.
#   bash gpu-bundle/run.sh [--tests-only | --bench-only] [extra args for the test harness]
set -uo pipefail
mode=all
case "${1:-}" in --tests-only) mode=tests; shift ;; --bench-only) mode=bench; shift ;; esac
repo=$(pwd)
bundle="$repo/gpu-bundle"
logs="$bundle/logs"
rm -rf "$logs"
mkdir -p "$logs"

source "$bundle/env.sh"
export HBRIDGE_REQUIRE_GPU=1

{
  echo "commit: $(cat "$bundle/commit.txt" 2>/dev/null)"
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
} | tee "$logs/env.txt"

summary=()
status=0
if [ "$mode" != bench ]; then
  for exe in "$bundle"/bin/test-*; do
    name=$(basename "$exe")
    start=$(date +%s)
    # The root crate's fixture tests: only their CUDA variants (the rest ran on CI; the CLI ones need
    # target/release/hbridge, which is not in the bundle).
    filter=()
    case "$name" in test-vision|test-edit|test-t2i) filter=(on_cuda) ;; esac
    "$exe" --test-threads=1 --nocapture "${filter[@]}" "$@" > "$logs/$name.log" 2>&1
    rc=$?
    passed=$(grep -c '\.\.\. ok$' "$logs/$name.log")
    failed=$(grep -c '\.\.\. FAILED$' "$logs/$name.log")
    skipped=$(grep -c 'SKIPPED' "$logs/$name.log")
    summary+=("$(printf '%-28s rc %-3s passed %-4s failed %-4s skipped %-3s %4ss' "$name" "$rc" "$passed" "$failed" "$skipped" "$(( $(date +%s) - start ))")")
    [ "$rc" = 0 ] || status=1
    grep -E 'FAILED|panicked|rel L2' "$logs/$name.log" | grep -v '\.\.\. ok' | head -40
  done
  # The whole-model checks again with the opt-in kernels (attention v2 on wgmma, the decode GEMV) chosen
  # wherever they apply, so a model-level difference shows up beside the kernel tests' own checks.
  for name in test-cuda_model test-t2i; do
    exe="$bundle/bin/$name"
    [ -e "$exe" ] || continue
    filter=()
    [ "$name" = test-t2i ] && filter=(on_cuda)
    start=$(date +%s)
    # sm90-all: the tiny models' heads (12-24 wide) would otherwise stay on v1.
    HBRIDGE_ATTENTION=sm90-all HBRIDGE_GEMV=1 "$exe" --test-threads=1 --nocapture "${filter[@]}" "$@" \
      > "$logs/$name+sm90+gemv.log" 2>&1
    rc=$?
    passed=$(grep -c '\.\.\. ok$' "$logs/$name+sm90+gemv.log")
    failed=$(grep -c '\.\.\. FAILED$' "$logs/$name+sm90+gemv.log")
    summary+=("$(printf '%-28s rc %-3s passed %-4s failed %-4s %4ss' "$name+sm90+gemv" "$rc" "$passed" "$failed" "$(( $(date +%s) - start ))")")
    [ "$rc" = 0 ] || status=1
    grep -E 'FAILED|panicked' "$logs/$name+sm90+gemv.log" | head -20
  done
fi
if [ "$mode" != tests ]; then
  for exe in "$bundle"/bin/bench-*; do
    [ -e "$exe" ] || continue
    name=$(basename "$exe")
    "$exe" --bench > "$logs/$name.log" 2>&1
    rc=$?
    summary+=("$(printf '%-28s rc %-3s (bench)' "$name" "$rc")")
    [ "$rc" = 0 ] || status=1
  done
fi
echo
echo "== summary =="
printf '%s\n' "${summary[@]}" | tee "$logs/summary.txt"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/logs.tgz" -C "$bundle" logs && cp "$logs/summary.txt" "$OUT/summary.txt"
fi
exit $status
