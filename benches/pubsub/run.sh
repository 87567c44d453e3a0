#!/usr/bin/env bash
# Pub/Sub through Weir's gateway vs Google's Pub/Sub emulator, same client, same box:
# publish and StreamingPull throughput of 1 KiB messages, side by side with the ratio.
#   benches/pubsub/run.sh [MESSAGES]
# Weir runs as `weir dev` (one node: every message fsynced before Publish answers) and as
# three `weir node`s with RF 3 (acks=all); the emulator keeps messages in memory only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
messages="${1:-100000}"
venv="$root/target/pubsub-bench-venv"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q -r "$here/requirements.txt"; }
(cd "$root" && cargo build --release --locked -q -p weir)
weir="$root/target/release/weir"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 300); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
py="$venv/bin/python"
results=()

emulator=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
if [ -x "$emulator" ]; then
  "$emulator" --host=127.0.0.1 --port=18085 > "$work/emulator.log" 2>&1 &
  pids+=($!)
  wait_port 18085
  sleep 2
  results+=("$("$py" "$here/pubsub_bench.py" --target 127.0.0.1:18085 --name emulator --messages "$messages")")
else
  echo "Google's Pub/Sub emulator is not installed (apt-get install google-cloud-cli-pubsub-emulator); Weir only" >&2
fi

"$weir" dev --data-dir "$work/dev" --controller 127.0.0.1:19093 --broker 127.0.0.1:19092 \
  --http 127.0.0.1:19080 --gateway 127.0.0.1:19085 > "$work/dev.log" 2>&1 &
pids+=($!)
wait_port 19085
results+=("$("$py" "$here/pubsub_bench.py" --target 127.0.0.1:19085 --name "weir dev (1 node, fsync)" --messages "$messages")")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

controllers="1=127.0.0.1:19193,2=127.0.0.1:19293,3=127.0.0.1:19393"
for i in 1 2 3; do
  "$weir" node --id $i --listen 127.0.0.1:19${i}93 --broker-listen 127.0.0.1:19${i}92 \
    --controllers "$controllers" --data-dir "$work/node-$i" > "$work/node-$i.log" 2>&1 &
  pids+=($!)
done
"$weir" gateway --listen 127.0.0.1:19485 --bootstrap 127.0.0.1:19193,127.0.0.1:19293,127.0.0.1:19393 \
  --replication-factor 3 > "$work/gateway.log" 2>&1 &
pids+=($!)
wait_port 19485
sleep 3
results+=("$("$py" "$here/pubsub_bench.py" --target 127.0.0.1:19485 --name "weir 3 nodes (RF 3, acks=all)" --messages "$messages")")

"$py" - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(r) for r in sys.argv[1:]]
print(f"{'target':34} {'publish msg/s':>14} {'MB/s':>7} {'pull+ack msg/s':>15} {'MB/s':>7}")
for r in rows:
    print(f"{r['name']:34} {r['publish_msg_s']:>14} {r['publish_mb_s']:>7} {r['pull_msg_s']:>15} {r['pull_mb_s']:>7}")
emu = next((r for r in rows if r["name"] == "emulator"), None)
if emu:
    for r in rows:
        if r is not emu:
            print(f"{r['name']}: publish {r['publish_msg_s'] / emu['publish_msg_s']:.2f}x the emulator, "
                  f"streaming pull {r['pull_msg_s'] / emu['pull_msg_s']:.2f}x")
PY
