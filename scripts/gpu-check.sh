#!/usr/bin/env bash
# Builds every GPU test and bench executable on this (GPU-less) build machine into gpu-bundle/ (git-ignored;
# the device tool carries it to the GPU machine, which has no cargo), and prints the single command that
# runs them all there. On the GPU machine `gpu-bundle/run.sh` writes logs under $OUT and ends with a table.
#   bash scripts/gpu-check.sh            # build the bundle
#   bash scripts/gpu-check.sh --no-bench # skip the criterion benches
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
with_bench=1
[ "${1:-}" = "--no-bench" ] && with_bench=0

bundle=gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin"

# Test executables: cargo prints each one's path in its JSON messages.
collect() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    kinds = m.get("target", {}).get("kind", [])
    if m.get("reason") == "compiler-artifact" and m.get("executable") and ("test" in kinds or "bench" in kinds):
        print(m["target"]["name"] + " " + m["executable"])
'
}

echo "building GPU test executables" >&2
cargo test --release --no-run --message-format=json \
  -p hbridge-kernels --test nvrtc_compile \
  -p hbridge-engine --test cuda_kernels --test cuda_model \
  -p hbridge --test vision --test edit --test engine_api --test t2i --test chat_session 2>/dev/null | collect > "$bundle/tests.txt"
if [ "$with_bench" = 1 ] && ls benches/*.rs >/dev/null 2>&1; then
  echo "building bench executables" >&2
  cargo bench --no-run --message-format=json 2>/dev/null | collect > "$bundle/benches.txt" || true
else
  : > "$bundle/benches.txt"
fi
echo "building the hbridge binary" >&2
cargo build --release --bin hbridge 2>/dev/null

while read -r name exe; do
  cp "$exe" "$bundle/bin/test-$name"
done < "$bundle/tests.txt"
while read -r name exe; do
  # The host-only benches (token sampling) need no GPU and would only crowd the 64 MiB carry.
  [ "$name" = sampling ] && continue
  cp "$exe" "$bundle/bin/bench-$name"
done < "$bundle/benches.txt"
cp target/release/hbridge "$bundle/bin/hbridge"
strip "$bundle"/bin/* 2>/dev/null || true
cp scripts/gpu-run.sh "$bundle/run.sh"
cp scripts/gpu-7b4b.sh "$bundle/run-7b4b.sh"
cp scripts/gpu-bench.sh "$bundle/run-bench.sh"
cp scripts/gpu-torch.sh "$bundle/run-torch.sh"
cp scripts/gpu-ncu.sh "$bundle/run-ncu.sh"
cp scripts/gpu-session.sh "$bundle/session.sh"
cp scripts/gpu-env.sh "$bundle/env.sh"
chmod +x "$bundle"/*.sh
git rev-parse --short HEAD > "$bundle/commit.txt" 2>/dev/null || echo unknown > "$bundle/commit.txt"
git diff --quiet 2>/dev/null || echo "(with uncommitted changes)" >> "$bundle/commit.txt"

du -sh "$bundle" >&2
ls -1 "$bundle/bin" >&2
echo
echo "On the GPU machine (device tool: carry [\"$bundle\"], timeout_s 600), one call runs a whole session's"
echo "checks, most important first, under a deadline (logs in \$OUT/logs.tgz, table in \$OUT/summary.txt):"
echo "  bash $bundle/session.sh 560"
echo "or a part of them: bash $bundle/run.sh [--tests-only|--bench-only], run-bench.sh, run-ncu.sh, run-torch.sh"
