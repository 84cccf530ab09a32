#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: a normal build, an
# AddressSanitizer+UndefinedBehaviorSanitizer build and a ThreadSanitizer
# build, each with the whole CTest suite, then the fuzz build: the libFuzzer
# targets of tests/fuzz built with clang and run for a bounded time each
# (MEMSLEEP_FUZZ_SECONDS, default 45, both at once). Exits non-zero on the
# first failure.
#
#   scripts/test.sh            all four builds
#   scripts/test.sh plain      just one (plain, asan, tsan or fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
builds=("${@:-plain asan tsan fuzz}")
for b in ${builds[@]}; do
  case "$b" in
    plain) san="" ;;
    asan) san="address,undefined" ;;
    tsan) san="thread" ;;
    fuzz) san="address,undefined" ;;
    *) echo "test.sh: unknown build '$b' (plain, asan, tsan, fuzz)" >&2; exit 2 ;;
  esac
  dir="build-test-$b"
  echo "== $b build ($dir)"
  if [ "$b" = fuzz ]; then
    CC=clang cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEMSLEEP_SANITIZE="$san" \
      -DMEMSLEEP_FUZZ=ON -DMEMSLEEP_FUZZ_SECONDS="${MEMSLEEP_FUZZ_SECONDS:-45}" \
      -DMEMSLEEP_BUILD_BENCH=OFF >/dev/null
    cmake --build "$dir" -j"$jobs" --target fuzz_serve fuzz_lb
    (cd "$dir" && ctest --output-on-failure -j"$jobs" -L fuzz)
    continue
  fi
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEMSLEEP_SANITIZE="$san" >/dev/null
  cmake --build "$dir" -j"$jobs"
  (cd "$dir" && ctest --output-on-failure -j"$jobs" --timeout 600)
done
echo "all tests passed (${builds[*]})"
