#!/usr/bin/env bash
# Google's own Pub/Sub client library (google-cloud-pubsub, unmodified) against a 3-node Weir
# cluster and two gateways: every Publisher and Subscriber call, ordering, redelivery, a
# gateway and a partition leader killed under load.
#   crates/weir-gateway/tests/pubsub/run.sh [pytest args]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
venv="$root/target/pubsub-venv"
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv" || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi
(cd "$root" && cargo build --locked -q -p weir)
export WEIR_BIN="$root/target/debug/weir"
exec "$venv/bin/pytest" -q -p no:cacheprovider "$here" "$@"
