#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: a normal build, an
# AddressSanitizer+UndefinedBehaviorSanitizer build and a ThreadSanitizer
# build, each with the whole CTest suite. Exits non-zero on the first failure.
#
#   scripts/test.sh            all three builds
#   scripts/test.sh plain      just one (plain, asan or tsan)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
builds=("${@:-plain asan tsan}")
for b in ${builds[@]}; do
  case "$b" in
    plain) san="" ;;
    asan) san="address,undefined" ;;
    tsan) san="thread" ;;
    *) echo "test.sh: unknown build '$b' (plain, asan, tsan)" >&2; exit 2 ;;
  esac
  dir="build-test-$b"
  echo "== $b build ($dir)"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEMSLEEP_SANITIZE="$san" >/dev/null
  cmake --build "$dir" -j"$jobs"
  (cd "$dir" && ctest --output-on-failure -j"$jobs" --timeout 600)
done
echo "all tests passed (${builds[*]})"
