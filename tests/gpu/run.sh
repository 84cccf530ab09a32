#!/usr/bin/env bash
# Builds memsleep and runs every GPU test on a machine with an NVIDIA GPU,
# then prints a table of results last. CI has no GPU: this is run by hand.
# Needs cmake, a C compiler, Python 3 with torch (CUDA) and nvidia-smi;
# cmocka is not needed (the CPU unit tests are not rebuilt here). The
# engine and server need jansson, libmicrohttpd and libcurl headers, which the
# GPU machine may lack: this build is of the memory core, the probe and
# memsleep-probe (MEMSLEEP_BUILD_SERVER=OFF).
#
#   tests/gpu/run.sh [BUILD_DIR]      (default: build-gpu)
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-gpu}
jobs=$(nproc 2>/dev/null || echo 4)
log_dir=${OUT:-$build}
mkdir -p "$log_dir"

nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMEMSLEEP_BUILD_TESTS=OFF \
     -DMEMSLEEP_BUILD_SERVER=OFF >/dev/null ||
   ! cmake --build "$build" -j"$jobs" >"$log_dir/gpu-build.log" 2>&1; then
  tail -n 40 "$log_dir/gpu-build.log"
  echo "gpu tests: build failed"
  exit 1
fi

declare -a names results
run() { # run NAME COMMAND...: records PASS / FAIL / SKIP
  local name=$1
  shift
  echo "== $name"
  "$@" 2>&1 | tee "$log_dir/$name.log"
  local rc=${PIPESTATUS[0]}
  names+=("$name")
  case $rc in
    0) results+=("PASS") ;;
    77) results+=("SKIP") ;;
    *) results+=("FAIL (exit $rc)") ;;
  esac
}

run probe_vs_nvidia_smi python3 tests/gpu/probe_test.py --probe "$build/tools/memsleep-probe"
# Logits against Hugging Face transformers: the models and memsleep's logits
# are made beforehand where the engine is built (hf_compare.py prepare, into
# .gpu-carry/hf) and travel with the tree; skipped when they are absent.
if [ -d .gpu-carry/hf ]; then
  run hf_transformers_logits python3 tests/gpu/hf_compare.py check --workdir .gpu-carry/hf
fi

echo
printf '%-28s %s\n' "gpu test" "result"
failed=0
for i in "${!names[@]}"; do
  printf '%-28s %s\n' "${names[$i]}" "${results[$i]}"
  [[ ${results[$i]} == FAIL* ]] && failed=1
done
exit $failed
