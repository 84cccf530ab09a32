#!/usr/bin/env bash
# Sets up a fresh machine, builds memsleep and runs the main job. Until the
# server exists, the main job is the host sleep/wake benchmark: 4 GiB in
# 1,000 allocations put to sleep and woken, next to a plain memcpy.
#
#   scripts/demo.sh [--gib N] [--allocs N] [--cycles N] [--copy]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DMEMSLEEP_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc 2>/dev/null || echo 2)"
exec build-release/bench/bench_host_sleep "$@"
