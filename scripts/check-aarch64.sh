#!/usr/bin/env bash
# The CPU backend on a CPU that is not x86: cross-builds the workspace for 64-bit ARM (aarch64 Linux),
# lints it, and runs the whole test suite under qemu-user, the CLI and C demo tests included (they start
# their executables through HBRIDGE_TEST_RUNNER). On ARM the engine takes its portable paths: the `gemm`
# crate's NEON kernels and loops that LLVM vectorizes, where x86 takes the hand-written AVX2/AVX-512
# kernels. qemu checks results only; its timings say nothing of a real ARM CPU.
#   bash scripts/check-aarch64.sh            # install what is missing (rustup target, Debian packages), then check
#   bash scripts/check-aarch64.sh --no-test  # lint only (about a minute once built)
# Exits 0 with "aarch64 check skipped: ..." when the tools cannot be installed on this machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
run_tests=1
[ "${1:-}" = "--no-test" ] && run_tests=0
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

skip() {
  echo "aarch64 check skipped: $*"
  exit 0
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "installing the $target standard library (rustup)"
  rustup target add "$target" >/dev/null 2>&1 || skip "rustup could not add $target"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  echo "installing the aarch64 cross C compiler and qemu-user (Debian packages)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  packages="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
  if ! $sudo apt-get install -y -q $packages >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null 2>&1 || true
    $sudo apt-get install -y -q $packages >/dev/null 2>&1 || skip "apt-get could not install $packages"
  fi
fi

# The onig regex library (tokenizers) is C: its build script needs the cross compiler.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
export HBRIDGE_TEST_RUNNER="qemu-aarch64 -L $sysroot"
# The C ABI test compiles examples/c/hbridge_demo.c for the target.
export TARGET_CC=aarch64-linux-gnu-gcc
# The NVRTC compile check needs the x86 NVRTC library, which an ARM process cannot load: it ran natively
# (`.ci/run` requires it there) and skips here.
unset HBRIDGE_REQUIRE_NVRTC

echo "+ cargo clippy --target $target --workspace --all-targets -- -D warnings"
cargo clippy --target "$target" --workspace --all-targets -- -D warnings
if [ "$run_tests" = 1 ]; then
  echo "+ cargo test --release --workspace --target $target (under qemu-aarch64)"
  cargo test --release --workspace --target "$target"
fi
