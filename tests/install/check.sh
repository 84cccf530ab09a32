#!/usr/bin/env bash
# Installs the build into a scratch prefix with `cmake --install` and builds
# the quickstart example against it twice: through pkg-config (shared
# library) and through the installed CMake package. Usage: check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
libdir=$(dirname "$(find "$tmp/prefix" -name memsleep.pc | head -n 1)")/..
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -std=c11 -Wall -Werror $(pkg-config --cflags memsleep) "$src/examples/quickstart.c" \
  -o "$tmp/quickstart" $(pkg-config --libs memsleep)
LD_LIBRARY_PATH="$libdir" "$tmp/quickstart" | grep -q 'weights say "the weights survive a sleep"'
mkdir -p "$tmp/consumer"
cat > "$tmp/consumer/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(memsleep REQUIRED)
add_executable(quickstart "$src/examples/quickstart.c")
target_link_libraries(quickstart PRIVATE memsleep::memsleep_static)
CMAKE
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer/build" >/dev/null
"$tmp/consumer/build/quickstart" | grep -q 'weights say "the weights survive a sleep"'
echo "install: pkg-config and CMake package both build and run the quickstart"
