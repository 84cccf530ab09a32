#!/usr/bin/env bash
# Sets up a fresh machine, builds memsleep and runs the main job: makes a
# small Llama-family model with memsleep-mkmodel, starts memsleep-serve on a
# free loopback port, sends it a few requests with memsleepctl (one of them
# streamed), shows the answers and the memory per tag, puts the server's
# memory to sleep and wakes it (same output after), and stops the server
# cleanly. Exits non-zero if any step fails.
#
#   scripts/demo.sh [--keep]      (--keep: leave the model directory behind)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

keep=0
for a in "$@"; do
  case "$a" in
    --keep) keep=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
  esac
done

build=build-release
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMEMSLEEP_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
serve="$build/src/server/memsleep-serve"
ctl="$build/tools/memsleepctl"
mkmodel="$build/tools/memsleep-mkmodel"

work=$(mktemp -d "${TMPDIR:-/tmp}/memsleep-demo.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$keep" = 1 ]; then echo "demo: model kept in $work/model"; else rm -rf "$work"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "make a model (random weights, byte-level tokenizer)"
"$mkmodel" --out "$work/model" --layers 4 --hidden 256

step "start memsleep-serve on a free loopback port"
"$serve" --model "$work/model" --host 127.0.0.1 --port 0 >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/serve.out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.err" >&2; echo "demo: the server died" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/serve.err" >&2; echo "demo: the server did not start" >&2; exit 1; }
cat "$work/serve.err" "$work/serve.out"
url="http://127.0.0.1:$port"
export MEMSLEEP_URL="$url"
"$ctl" health >/dev/null

# The weights are random, so the text is noise; what the demo shows is the
# path: HTTP -> scheduler -> forward pass -> sampler -> tokenizer -> HTTP.
step "memsleepctl generate 'The memory sleeps'  (greedy, 24 tokens)"
"$ctl" generate --max-new-tokens 24 "The memory sleeps"

step "memsleepctl generate --stream 'and wakes again'  (tokens as they come)"
"$ctl" generate --stream --max-new-tokens 24 "and wakes again"

step "memsleepctl generate --temperature 0.8 --seed 7  (sampled, reproducible)"
a=$("$ctl" generate --temperature 0.8 --seed 7 --max-new-tokens 16 "seeded" 2>/dev/null)
b=$("$ctl" generate --temperature 0.8 --seed 7 --max-new-tokens 16 "seeded" 2>/dev/null)
printf '%s\n' "$a"
[ "$a" = "$b" ] || { echo "demo: the same seed gave different text" >&2; exit 1; }
echo "(same seed, same text: yes)"

step "four requests at once (continuous batching)"
for i in 1 2 3 4; do
  "$ctl" generate --max-new-tokens 32 --ignore-eos "request $i" >"$work/par.$i" 2>&1 &
done
wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
for i in 1 2 3 4; do grep -q "32 tokens" "$work/par.$i" || { cat "$work/par.$i"; exit 1; }; done
echo "4 answers of 32 tokens each"

step "memsleepctl info  (memory per memsleep tag, measured)"
"$ctl" info | python3 -c '
import json, sys
j = json.load(sys.stdin)
m, s = j["model"], j["scheduler"]
print("model: %s, %d layers, vocab %d, %.1f MiB of weights" % (
    m["architecture"], m["num_layers"], m["vocab_size"], m["weight_bytes"] / 2**20))
print("scheduler: %d requests done, %d tokens generated, %d/%d KV blocks free" % (
    s["requests_total"], s["generated_tokens_total"], s["kv_blocks_free"], s["kv_blocks_total"]))
for tag, v in j["memory"].items():
    print("  %-10s resident %8.1f MiB  reserved %8.1f MiB  %s" % (
        tag, v["resident_bytes"] / 2**20, v["reserved_bytes"] / 2**20,
        "asleep" if v["asleep"] else "awake"))'

step "sleep and wake: release every tag (weights kept in a backup), then resume"
before=$("$ctl" generate --max-new-tokens 16 "The memory sleeps" 2>/dev/null)
"$ctl" release >"$work/release.json"
"$ctl" is-sleeping
python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print("released %s: resident %.1f MiB -> %.1f MiB (measured)" % (
    ", ".join(j["released"]), j["resident_bytes_before"] / 2**20, j["resident_bytes_after"] / 2**20))' \
  "$work/release.json"
"$ctl" resume >/dev/null
after=$("$ctl" generate --max-new-tokens 16 "The memory sleeps" 2>/dev/null)
[ "$before" = "$after" ] || { echo "demo: the output changed across sleep/wake" >&2; exit 1; }
echo "resumed; greedy output before and after the sleep: identical"

step "stop the server (SIGTERM)"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
cat "$work/serve.err" | tail -n 2
[ "$rc" = 0 ] || { echo "demo: memsleep-serve exited with $rc" >&2; exit 1; }
echo "demo: done"
