#!/usr/bin/env bash
# The cost of TLS: the same 3-node loopback cluster (RF 3, acks=all, 6 partitions, 12
# producers, 64 x 1 KiB per batch) in plain text, then with TLS on every listener and
# between nodes (mutual TLS, the `weir-cluster up --tls` certificates), in one run.
#
#   benches/tls/run.sh [SECONDS]
#
# Prints both and the ratio. See benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-15}
WORK=target/bench-tls
rm -rf "$WORK"
mkdir -p "$WORK"

echo "== build (release)"
cargo build --release --locked -q -p weir -p weir-cluster -p weir-benches
trap './target/release/weir-cluster down --dir "$WORK/plain" >/dev/null 2>&1 || true; ./target/release/weir-cluster down --dir "$WORK/tls" >/dev/null 2>&1 || true' EXIT

run() { # name, extra up flags, extra bench flags
  ./target/release/weir-cluster up --nodes 3 --dir "$WORK/$1" $2 > "$WORK/$1-up.txt"
  local boot
  boot=$(sed -n 's/^bootstrap: //p' "$WORK/$1-up.txt")
  ./target/release/e2e-bench --bootstrap "$boot" --seconds "$SECONDS_PER_RUN" --partitions 6 \
    --producers 12 --replication-factor 3 --acks all $3 | tee "$WORK/$1.txt"
  ./target/release/weir-cluster down --dir "$WORK/$1" >/dev/null
}

echo "== plain text"
run plain "" ""
echo "== TLS everywhere (clients, replication, Raft)"
run tls "--tls" "--tls-dir $WORK/tls/tls"

PLAIN=$(awk '/^produce/ {print $2}' "$WORK/plain.txt")
TLS=$(awk '/^produce/ {print $2}' "$WORK/tls.txt")
echo
printf '%-12s %10s %12s %12s\n' "" "MB/s" "p50 (us)" "p99 (us)"
for name in plain tls; do
  awk -v n="$name" '/^produce/ {printf "%-12s %10s %12s %12s\n", n, $2, $10, $13}' "$WORK/$name.txt"
done
python3 -c "print(f'TLS keeps {float($TLS) / float($PLAIN) * 100:.1f}% of plain-text throughput')"
