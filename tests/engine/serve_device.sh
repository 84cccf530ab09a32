#!/bin/sh
# serve_device.sh - memsleep-serve's --device option on a machine where CUDA
# cannot be used (CI: no driver, no GPU; or a build without the CUDA
# engine): a malformed device is a usage error (exit 2), and --device cuda:0
# stops start-up (exit 1) with a message naming the device and the reason,
# before any model is loaded. Exits 77 (skipped) where cuda:0 works.
#
#   serve_device.sh MEMSLEEP_SERVE MEMSLEEP_MKMODEL WORKDIR
set -u
serve=$1 mkmodel=$2 work=$3
rm -rf "$work" && mkdir -p "$work" || exit 1
"$mkmodel" --out "$work/model" --force >/dev/null || exit 1
fail() {
  echo "FAIL: $*"
  cat "$work/err"
  exit 1
}

"$serve" --model "$work/model" --port 0 --device gpu0 >/dev/null 2>"$work/err"
rc=$?
[ $rc -eq 2 ] || fail "--device gpu0: exit $rc, expected 2"
grep -q -- '--device: device "gpu0": expected "cpu" or "cuda:N"' "$work/err" ||
  fail "--device gpu0: no message naming the value"

timeout 60 "$serve" --model "$work/model" --port 0 --device cuda:0 >"$work/out" 2>"$work/err"
rc=$?
if grep -q "listening on" "$work/out"; then
  echo "SKIP: cuda:0 is usable here (the GPU test covers it)"
  exit 77
fi
[ $rc -eq 1 ] || fail "--device cuda:0: exit $rc, expected 1"
grep -q -- "memsleep-serve: device cuda:0: " "$work/err" || fail "--device cuda:0: no message"
grep -q -e "no CUDA engine" -e "driver" -e "no usable CUDA device" "$work/err" ||
  fail "--device cuda:0: the message gives no reason"
grep -q "loading" "$work/err" && fail "--device cuda:0: the model was loaded first"
echo "PASS: $(cat "$work/err")"
exit 0
