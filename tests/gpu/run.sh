#!/usr/bin/env bash
# Builds memsleep and runs every GPU test on a machine with an NVIDIA GPU,
# then prints a table of results last. CI has no GPU: this is run by hand.
# Needs cmake, a C compiler, the CUDA toolkit (headers and libcudart; nvcc is
# not needed), Python 3 with torch (CUDA) and nvidia-smi; cmocka is not
# needed (the CPU unit tests are not rebuilt here). The engine and server need
# jansson, libmicrohttpd and libcurl headers, which the GPU machine may lack:
# this build is of the memory core, the interposer, the probe, the GPU tests
# and the benchmarks (MEMSLEEP_BUILD_SERVER=OFF, MEMSLEEP_GPU_TESTS=ON).
#
#   tests/gpu/run.sh [--bench] [BUILD_DIR]      (default: build-gpu)
#
# --bench (or MEMSLEEP_GPU_BENCH=1) also runs the GPU sleep/wake benchmark
# after the tests, and bench/gpu_serving.py (decode throughput against
# transformers, sleep/wake over HTTP) on the engine build. MEMSLEEP_GPU_ONLY="name ..." runs only the entries named. Each entry runs under a time limit of
# MEMSLEEP_GPU_TEST_TIMEOUT seconds (default 300). Exit codes: 0 pass,
# 77 skipped (no GPU, too few GPUs, no torch), anything else a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
bench=${MEMSLEEP_GPU_BENCH:-0}
if [ "${1:-}" = --bench ]; then
  bench=1
  shift
fi
build=${1:-build-gpu}
limit=${MEMSLEEP_GPU_TEST_TIMEOUT:-300}
jobs=$(nproc 2>/dev/null || echo 4)
log_dir=${OUT:-$build}
mkdir -p "$log_dir"

nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMEMSLEEP_BUILD_TESTS=OFF \
     -DMEMSLEEP_BUILD_SERVER=OFF -DMEMSLEEP_GPU_TESTS=ON -DMEMSLEEP_BUILD_BENCH=ON \
     >"$log_dir/gpu-configure.log" 2>&1 ||
   ! cmake --build "$build" -j"$jobs" >"$log_dir/gpu-build.log" 2>&1; then
  tail -n 40 "$log_dir/gpu-configure.log" "$log_dir/gpu-build.log" 2>/dev/null
  echo "gpu tests: build failed"
  exit 1
fi

declare -a names results
only=${MEMSLEEP_GPU_ONLY:-} # names to run (space-separated); empty: all
run() { # run NAME COMMAND...: records PASS / FAIL / SKIP
  local name=$1
  shift
  if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then
    return 0
  fi
  echo "== $name"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$log_dir/$name.log"
  local rc=${PIPESTATUS[0]}
  names+=("$name")
  case $rc in
    0) results+=("PASS") ;;
    77) results+=("SKIP") ;;
    124 | 137) results+=("FAIL (timed out after ${limit} s)") ;;
    *) results+=("FAIL (exit $rc)") ;;
  esac
}

# The memory core on the CUDA backend, through the public API.
gpu=$build/tests/gpu
run cuda_contract "$gpu/test_cuda_contract"
run cuda_residual "$gpu/test_cuda_residual"
run cuda_graph_replay "$gpu/test_cuda_graph"
run cuda_oom_on_resume "$gpu/test_cuda_oom"
run cuda_multi_device "$gpu/test_cuda_multi"
# PyTorch with the cudaMalloc interposer preloaded.
run torch_interposer python3 tests/gpu/test_interposer.py --lib "$build/lib/libmemsleep_preload.so"
# The Python package: a transformers model in regions, and the same program
# through the torch_memory_saver compatibility layer, in both hook modes.
for mode in torch preload; do
  run torch_model_sleep_$mode python3 tests/gpu/torch_model_sleep.py --lib-dir "$build/lib" \
    --hook-mode $mode
  run torch_compat_sleep_$mode python3 tests/gpu/torch_compat_sleep.py --lib-dir "$build/lib" \
    --hook-mode $mode
done

run probe_vs_nvidia_smi python3 tests/gpu/probe_test.py --probe "$build/tools/memsleep-probe" \
  --lib-dir "$build/lib"
# Logits against Hugging Face transformers: the models and memsleep's logits
# are made beforehand where the engine is built (hf_compare.py prepare, into
# .gpu-carry/hf) and travel with the tree; skipped when they are absent.
if [ -d .gpu-carry/hf ]; then
  run hf_transformers_logits python3 tests/gpu/hf_compare.py check --workdir .gpu-carry/hf
fi

# The engine's CUDA backend (bf16, cuBLAS) against its CPU backend, greedy
# tokens across release/resume of every tag subset, alone = in a batch. The
# engine needs jansson, libmicrohttpd and libcurl (pkg-config); it is built
# in its own directory, and skipped when they are missing.
if pkg-config --exists jansson libmicrohttpd libcurl 2>/dev/null; then
  if cmake -S . -B "$build-engine" -DCMAKE_BUILD_TYPE=Release -DMEMSLEEP_BUILD_TESTS=OFF \
       -DMEMSLEEP_BUILD_SERVER=ON -DMEMSLEEP_GPU_TESTS=ON -DMEMSLEEP_BUILD_BENCH=OFF \
       -DMEMSLEEP_CUDA_ENGINE=ON >"$log_dir/engine-configure.log" 2>&1 &&
     cmake --build "$build-engine" -j"$jobs" --target engine_gpu_test memsleep-serve \
       memsleep-mkmodel dump_logits >"$log_dir/engine-build.log" 2>&1; then
    run engine_gpu_vs_cpu "$build-engine/tests/gpu/engine_gpu_test"
    # After releasing every tag, the engine's process against a bare one.
    cmake --build "$build-engine" -j"$jobs" --target engine_residual_test memsleep-probe \
      >>"$log_dir/engine-build.log" 2>&1
    run engine_residual "$build-engine/tests/gpu/engine_residual_test" \
      "$build-engine/tools/memsleep-probe"
    # The same through memsleep-serve over HTTP: release every tag (CUDA
    # graphs included), the server's process against a bare one.
    run serve_residual python3 tests/gpu/serve_residual.py \
      --serve "$build-engine/src/server/memsleep-serve" \
      --mkmodel "$build-engine/tools/memsleep-mkmodel" --probe "$build-engine/tools/memsleep-probe" \
      --residual-test "$build-engine/tests/gpu/engine_residual_test" \
      --workdir "$build-engine/serve-residual"
    # The GPU engine's logits against transformers in bf16 (and float32) on
    # the same GPU, for each architecture memsleep-mkmodel makes.
    run engine_hf_logits_bf16 python3 tests/gpu/hf_compare.py gpu \
      --mkmodel "$build-engine/tools/memsleep-mkmodel" \
      --dump "$build-engine/tests/engine/dump_logits" --workdir "$build-engine/hf-bf16"
    # The server's rules (control plane: the fourteen sleep/wake rules) and
    # its HTTP behaviour, against a server on the GPU.
    serve_args=(--serve "$build-engine/src/server/memsleep-serve"
                --mkmodel "$build-engine/tools/memsleep-mkmodel")
    run integration_control_gpu env MEMSLEEP_TEST_SERVE_ARGS="--device cuda:0" \
      python3 tests/integration/test_control.py "${serve_args[@]}"
    # memsleepctl (libcurl) may not link where libcurl's own dependencies are
    # missing; it runs no GPU code, so its tests (class Ctl) are left out then.
    ctl_tests=()
    if ! cmake --build "$build-engine" -j"$jobs" --target memsleepctl \
         >>"$log_dir/engine-build.log" 2>&1; then
      echo "== integration_server_gpu: memsleepctl did not build, its tests (Ctl) left out"
      mapfile -t ctl_tests < <(grep -oP '^class \K\w+(?=\(unittest\.TestCase\))' \
        tests/integration/test_server.py | grep -vx Ctl)
    fi
    run integration_server_gpu env MEMSLEEP_TEST_SERVE_ARGS="--device cuda:0" \
      python3 tests/integration/test_server.py "${serve_args[@]}" \
      --ctl "$build-engine/tools/memsleepctl" "${ctl_tests[@]}"
    if [ "$bench" = 1 ]; then
      # The compute backend's decode step (graphs on and off) against the
      # batch-1 bound, on the model bench/gpu_serving.py serves.
      cmake --build "$build-engine" -j"$jobs" --target bench_engine_decode \
        >>"$log_dir/engine-build.log" 2>&1
      decode_model=$build-engine/decode-model
      "$build-engine/tools/memsleep-mkmodel" --out "$decode_model" --force --arch qwen2 \
        --layers 24 --hidden 896 --heads 14 --kv-heads 2 --intermediate 4864 \
        --rope-theta 1000000 --dtype bf16 --max-position 4096 --vocab 151936 >/dev/null
      run bench_engine_decode "$build-engine/bench/bench_engine_decode" "$decode_model"
      # Decode throughput against transformers, and sleep/wake over HTTP
      # against a pinned copy (bench/gpu_serving.py; docs/PERFORMANCE.md).
      run bench_gpu_serving python3 bench/gpu_serving.py --build "$build-engine"
    fi
  else
    tail -n 40 "$log_dir/engine-configure.log" "$log_dir/engine-build.log" 2>/dev/null
    names+=("engine_gpu_vs_cpu")
    results+=("FAIL (engine build)")
  fi
else
  echo "== engine_gpu_vs_cpu: skipped (pkg-config finds no jansson, libmicrohttpd or libcurl)"
fi

# The GPU sleep/wake benchmark (its own table says which targets were met).
if [ "$bench" = 1 ]; then
  run bench_gpu_sleep_wake "$build/bench/bench_gpu_sleep_wake"
  run bench_python_sleep_wake python3 bench/python_sleep_wake.py --lib-dir "$build/lib"
fi

echo
printf '%-30s %s\n' "gpu test" "result"
failed=0
for i in "${!names[@]}"; do
  printf '%-30s %s\n' "${names[$i]}" "${results[$i]}"
  [[ ${results[$i]} == FAIL* ]] && failed=1
done
exit $failed
