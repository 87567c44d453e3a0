#!/usr/bin/env bash
# The Compose cluster under load: an idempotent acks=all producer and a consumer group run
# while (1) every container is restarted one by one the way an orchestrator does it
# (docker stop: SIGTERM, the broker drains, then start and wait until the cluster is whole),
# and (2) one container is SIGKILLed and another cut off the network for 10 s.
# `weir-rolling` prints produce latency per step and fails on any failed send, any
# acknowledged record missing or doubled in the log, or one the group never saw.
#
#   deploy/compose/test.sh            (needs Docker and docker-compose; builds the image)
#   WEIR_PROFILE=debug deploy/compose/test.sh   (the debug build, as CI runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
project=weirtest
compose="docker-compose -p $project -f deploy/compose/docker-compose.yml"
node() { echo "${project}_node-$1_1"; }

profile=${WEIR_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --locked -q -p weir -p weir-cluster
else
  cargo build --locked -q -p weir -p weir-cluster
fi
WEIR_IMAGE_BINARY="target/$profile/weir" deploy/image/build.sh
rolling="target/$profile/weir-rolling"
$compose down -v --remove-orphans >/dev/null 2>&1 || true
cleanup() {
  $compose logs --no-color > target/compose-test.log 2>&1 || true
  $compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
$compose up -d
for i in 1 2 3; do
  for _ in $(seq 150); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$(node "$i")")" = healthy ] && break
    sleep 0.2
  done
  docker inspect -f "{{.Name}} {{.State.Health.Status}}" "$(node "$i")"
done

boot=10.231.0.11:9093,10.231.0.12:9093,10.231.0.13:9093
restart() { echo "docker stop -t 30 $(node "$1") >/dev/null && docker start $(node "$1") >/dev/null"; }
echo "== rolling restart of every container under load"
"$rolling" --bootstrap "$boot" --topic rolling --rate 400 --settle-s 3 \
  --step "$(restart 1)" --step "$(restart 2)" --step "$(restart 3)"

echo "== SIGKILL one container, cut another off the network for 10 s"
"$rolling" --bootstrap "$boot" --topic faults --rate 400 --settle-s 3 \
  --step "docker kill $(node 2) >/dev/null && sleep 2 && docker start $(node 2) >/dev/null" \
  --step "docker network disconnect ${project}_weir $(node 3) && sleep 10 && docker network connect --ip 10.231.0.13 ${project}_weir $(node 3)"
echo "== the quorum grows to four controllers and shrinks back, under load"
weir="target/$profile/weir"
voters="$weir cluster status --bootstrap $boot | grep -c ' voter\$'"
# the controller that answers `cluster status` may not have the new membership yet: up to 10 s
voters_are() { echo "{ for i in \$(seq 50); do test \$($voters) -eq $1 && break; sleep 0.2; done; test \$($voters) -eq $1; }"; }
"$rolling" --bootstrap "$boot" --topic scaling --rate 400 --settle-s 3 \
  --step "$compose --profile scale up -d node-4 && sleep 2 && $weir cluster add-controller --id 4 --address 10.231.0.14:9093 --internal-address 10.231.0.14:9095 --bootstrap $boot >/dev/null && $(voters_are 4)" \
  --step "$weir cluster remove-controller --id 4 --bootstrap $boot >/dev/null && $(voters_are 3) && $compose --profile scale stop -t 30 node-4"
"$weir" cluster status --bootstrap "$boot"
echo "compose test passed"
