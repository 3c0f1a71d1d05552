# Sourced by the GPU-machine scripts (copied into gpu-bundle/env.sh by scripts/gpu-check.sh): the
# /work/main link the bundled executables find their fixtures through, and the machine's own CUDA
# libraries (libcuda comes with the driver; libnvrtc and libcublasLt from the toolkit or the PyTorch
# wheels) on LD_LIBRARY_PATH, with ptxas for the resource report. Expects $repo (the repository root).

# The executables were built at /work/main and find fixtures through that path.
if [ ! -e /work/main ]; then
  mkdir -p /work 2>/dev/null && ln -s "$repo" /work/main 2>/dev/null || echo "note: cannot link /work/main -> $repo"
fi
gpu_libdirs=()
for lib in libnvrtc.so libcublasLt.so libcublas.so; do
  d=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 ~ "^"l {print $NF; exit}' | xargs -r dirname)
  [ -n "$d" ] && gpu_libdirs+=("$d")
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && gpu_libdirs+=("$d"); done
for d in $(python3 -c 'import nvidia, os; [print(os.path.join(p, s, "lib")) for p in nvidia.__path__ for s in os.listdir(p)]' 2>/dev/null); do
  [ -d "$d" ] && gpu_libdirs+=("$d")
done
export LD_LIBRARY_PATH="$(IFS=:; echo "${gpu_libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v ptxas >/dev/null || { [ -x /usr/local/cuda/bin/ptxas ] && export HBRIDGE_PTXAS=/usr/local/cuda/bin/ptxas; }
