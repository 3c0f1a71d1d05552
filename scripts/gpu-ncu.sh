#!/usr/bin/env bash
# Runs on the GPU machine (copied into gpu-bundle/run-ncu.sh by scripts/gpu-check.sh): Nsight Compute on
# one launch of each kernel issue 5 asks to explain (attention v1, v2 and v3 at the gen and bridge shapes,
# the modulated RMSNorm, the decode GEMV beside cuBLASLt at the lm_head shape), driven by the kernel
# benches at their hbridge-7b4b shapes. Each report goes to $OUT/ncu-<case>.txt; the headline metrics
# (duration, SM and memory throughput, occupancy, registers, the top stall reasons) are printed.
#   bash gpu-bundle/run-ncu.sh [case-name-regex]
set -uo pipefail
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${OUT:-$bundle/logs}"
mkdir -p "$logs"
ncu=$(command -v ncu || true)
[ -z "$ncu" ] && [ -x /usr/local/cuda/bin/ncu ] && ncu=/usr/local/cuda/bin/ncu
[ -z "$ncu" ] && { echo "no ncu on this machine"; exit 1; }
repo="$(dirname "$bundle")"
source "$bundle/env.sh"
only="${1:-.}"
# kernel-name regex | criterion benchmark filter
cases=(
  "attn_fwd_d128|gpu/attention/bridge_4112q_512und_4112gen_d128_gqa7$"
  "attn_fwd_sm90_d128|gpu/attention/bridge_4112q_512und_4112gen_d128_gqa7_sm90$"
  "attn_fwd_sm90_pipe_d128|gpu/attention/bridge_4112q_512und_4112gen_d128_gqa7_sm90pipe$"
  "attn_fwd_d128|gpu/attention/gen_self_4112_d120_gqa3$"
  "attn_fwd_sm90_d128|gpu/attention/gen_self_4112_d120_gqa3_sm90$"
  "rownorm_block_v8|gpu/rmsnorm/gen_modulated_8224x2520$"
  "gemv_n1|gpu/gemv/lm_head_3584_to_152064$"
  ".|gpu/gemv/lm_head_3584_to_152064_cublaslt$"
)
for c in "${cases[@]}"; do
  kernel=${c%%|*}
  filter=${c#*|}
  name=$(echo "${filter%$}" | tr '/' '_')
  echo "$name" | grep -Eq "$only" || continue
  echo "== ncu $name (kernel /$kernel/)"
  timeout 300 "$ncu" --kernel-name "regex:$kernel" --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
    "$bundle/bin/bench-kernels" --bench "$filter" --profile-time 1 > "$logs/ncu-$name.txt" 2>&1
  echo "rc $?"
  grep -E "^\s+[a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per Thread|Issue Slots Busy|Stall" \
    "$logs/ncu-$name.txt" | head -24
done
