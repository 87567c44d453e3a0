#!/usr/bin/env bash
# Weir and NATS JetStream side by side on this machine, in one run: three nodes each on
# loopback, replication factor 3, 1 KiB messages, every acknowledgement after fsync on a
# quorum (Weir: RF 3 acks=all, min ISR 2; NATS: R3 stream, `sync_interval: always`).
#
#   benches/compare-nats/run.sh [SECONDS]
#
# Prints each system's throughput and latency, then the ratio. See benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-15}
WORK=target/compare-nats
rm -rf "$WORK/weir" "$WORK/nats" "$WORK/nats.jsonl"
mkdir -p "$WORK"

echo "== build (release)"
cargo build --release --locked -q -p weir -p weir-cluster -p weir-benches
if [ ! -x "$WORK/venv/bin/nats-server" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q -r benches/compare-nats/requirements.txt
fi

# a VM's fresh pages cost a host fault on first write; warm them once per boot (see the file)
if [ "${WARM_MEMORY:-1}" != 0 ]; then
  echo "== memory (WARM_MEMORY=0 skips)"
  python3 benches/compare-nats/warm_memory.py
fi

echo "== Weir: 3 combined nodes, RF 3, acks=all, 6 partitions, 12 producers, 64 x 1 KiB per batch"
./target/release/weir-cluster up --nodes 3 --dir "$WORK/weir" > "$WORK/weir-up.txt"
BOOT=$(sed -n 's/^bootstrap: //p' "$WORK/weir-up.txt")
trap './target/release/weir-cluster down --dir "$WORK/weir" >/dev/null 2>&1 || true; pkill -f "$WORK/nats" || true' EXIT
./target/release/e2e-bench --bootstrap "$BOOT" --seconds "$SECONDS_PER_RUN" --partitions 6 \
  --producers 12 --replication-factor 3 --acks all | tee "$WORK/weir.txt"
WEIR_MB=$(awk '/^produce/ {print $2}' "$WORK/weir.txt")
HALF=$(python3 -c "print(round($WEIR_MB / 2, 1))")
echo "== Weir at half its rate ($HALF MB/s, open loop)"
python3 benches/compare-nats/fsync_rounds.py snapshot "$WORK/weir" "$WORK/fsync-before.json" || true
./target/release/e2e-bench --bootstrap "$BOOT" --seconds "$SECONDS_PER_RUN" --partitions 6 \
  --producers 12 --replication-factor 3 --acks all --rate-mb-s "$HALF" --window-ms 1000 \
  | tee "$WORK/weir-half.txt"
FSYNC_ROUNDS=$(python3 benches/compare-nats/fsync_rounds.py since "$WORK/weir" "$WORK/fsync-before.json" || true)
./target/release/weir-cluster down --dir "$WORK/weir" >/dev/null
# a latency spike on every node at once is usually the disk: the nodes log each slow fsync round
SLOW_ROUNDS=$(cat "$WORK"/weir/*.log 2>/dev/null | grep "slow fsync round" || true)

echo "== NATS JetStream $("$WORK/venv/bin/nats-server" --version | awk '{print $2}'): 3 servers, R3 file stream, sync_interval: always"
ROUTES="nats-route://127.0.0.1:16221,nats-route://127.0.0.1:16222,nats-route://127.0.0.1:16223"
for i in 1 2 3; do
  mkdir -p "$WORK/nats/n$i"
  cat > "$WORK/nats/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:1622$((i + 3))
jetstream { store_dir: "$PWD/$WORK/nats/n$i", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:1622$i, routes: [$ROUTES] }
CONF
  "$WORK/venv/bin/nats-server" -c "$WORK/nats/n$i.conf" > "$WORK/nats/n$i.log" 2>&1 &
done
SERVERS="nats://127.0.0.1:16224,nats://127.0.0.1:16225,nats://127.0.0.1:16226"
sleep 3
best=""
# the client is Python: several processes, each with many publishes in flight, so the
# servers rather than one interpreter set the pace; the best shape counts
for shape in "2 128" "4 64" "6 48"; do
  set -- $shape
  if out=$("$WORK/venv/bin/python" benches/compare-nats/nats_bench.py --servers "$SERVERS" \
    --processes "$1" --tasks "$2" --seconds "$SECONDS_PER_RUN" 2>>"$WORK/nats-bench.err"); then
    echo "nats  $1 processes x $2 publishers: $out"
    echo "$out" >> "$WORK/nats.jsonl"
  else
    echo "nats  $1 processes x $2 publishers: failed (see $WORK/nats-bench.err)"
  fi
done
NATS_MB=$(python3 -c "
import json
rows = [json.loads(l) for l in open('$WORK/nats.jsonl')]
print(round(max(r['mb_per_s'] for r in rows), 1))")
pkill -f "$WORK/nats" || true

echo "== side by side (1 KiB, RF 3, acknowledged after fsync on a quorum)"
printf '%-30s %8s MB/s\n' "Weir (best shape above)" "$WEIR_MB" "NATS JetStream (best shape)" "$NATS_MB"
python3 -c "print(f'ratio Weir / NATS: {$WEIR_MB / $NATS_MB:.2f}x')"
awk '/^produce/ {print "Weir at half rate: " $0}' "$WORK/weir-half.txt"
echo "Weir nodes' fsync rounds during the half-rate run (the disk's share of the tail):"
echo "$FSYNC_ROUNDS"
if [ -n "$SLOW_ROUNDS" ]; then
  echo "Weir nodes' fsync rounds of 50 ms or more (the disk, not the nodes; both Weir runs):"
  echo "$SLOW_ROUNDS" | sed -n 's/.*\(ms=[0-9]*\).*/  \1/p' | sort | uniq -c
else
  echo "Weir nodes' fsync rounds of 50 ms or more: none"
fi
