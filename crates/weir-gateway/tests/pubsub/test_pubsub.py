"""Google's Pub/Sub client library (unmodified) against Weir: a 3-node cluster and two
gateways. The disruptive tests (a gateway killed, a partition leader killed) come last."""

import threading
import time
from collections import defaultdict

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.pubsub_v1 import types

from conftest import PROJECT, wait_until


def create(cluster, names, **sub_fields):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": sub, "topic": topic, **sub_fields})
    return publisher, subscriber


def pull_all(subscriber, sub, want, timeout=20.0, ack=True):
    """Pulls (unary) until `want` messages arrived; returns them."""
    got = []
    deadline = time.time() + timeout
    while len(got) < want and time.time() < deadline:
        r = subscriber.pull(request={"subscription": sub, "max_messages": 100}, timeout=15)
        got.extend(r.received_messages)
        if ack and r.received_messages:
            subscriber.acknowledge(
                request={"subscription": sub, "ack_ids": [m.ack_id for m in r.received_messages]}
            )
    return got


def test_topic_calls_and_google_errors(cluster, names):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    created = publisher.create_topic(request={"name": topic, "labels": {"team": "a"}})
    assert created.name == topic
    assert publisher.get_topic(request={"topic": topic}).name == topic
    listed = [t.name for t in publisher.list_topics(request={"project": f"projects/{PROJECT}"})]
    assert topic in listed
    updated = publisher.update_topic(
        request={
            "topic": {"name": topic, "message_retention_duration": {"seconds": 8 * 24 * 3600}},
            "update_mask": field_mask_pb2.FieldMask(paths=["message_retention_duration"]),
        }
    )
    assert updated.message_retention_duration.total_seconds() == 8 * 24 * 3600
    with pytest.raises(exceptions.AlreadyExists):
        publisher.create_topic(request={"name": topic})
    for bad in ["projects/p/topics/ab", "projects/p/topics/goog-x", "topics/x", "projects/p/topics/a b"]:
        with pytest.raises(exceptions.InvalidArgument):
            publisher.create_topic(request={"name": bad})
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(request={"topic": topic + "-missing"})
    with pytest.raises(exceptions.NotFound):
        publisher.publish(topic + "-missing", b"x").result(timeout=30)
    with pytest.raises(exceptions.InvalidArgument):
        publisher.api.publish(request={"topic": topic, "messages": [{}]})
    with pytest.raises(exceptions.InvalidArgument):
        publisher.api.publish(
            request={"topic": topic, "messages": [{"data": b"x", "attributes": {"k": "v" * 2000}}]}
        )
    subscriber.create_subscription(request={"name": sub, "topic": topic})
    subs = list(publisher.list_topic_subscriptions(request={"topic": topic}))
    assert subs == [sub]
    publisher.delete_topic(request={"topic": topic})
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(request={"topic": topic})
    # the subscription outlives its topic, as Google's do
    assert subscriber.get_subscription(request={"subscription": sub}).topic == "_deleted-topic_"
    subscriber.delete_subscription(request={"subscription": sub})


def test_subscription_calls(cluster, names):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    with pytest.raises(exceptions.NotFound):
        subscriber.create_subscription(request={"name": sub, "topic": topic})
    publisher.create_topic(request={"name": topic})
    created = subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "ack_deadline_seconds": 30,
            "labels": {"env": "test"},
            "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 5}},
            "retain_acked_messages": True,
        }
    )
    assert created.ack_deadline_seconds == 30
    # Google's default: deleted after 31 idle days
    assert created.expiration_policy.ttl.total_seconds() == 31 * 24 * 3600
    assert created.retry_policy.maximum_backoff.seconds == 5
    with pytest.raises(exceptions.AlreadyExists):
        subscriber.create_subscription(request={"name": sub, "topic": topic})
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.create_subscription(
            request={"name": sub + "-x", "topic": topic, "ack_deadline_seconds": 700}
        )
    got = subscriber.get_subscription(request={"subscription": sub})
    assert got.labels["env"] == "test" and got.retain_acked_messages
    updated = subscriber.update_subscription(
        request={
            "subscription": {"name": sub, "ack_deadline_seconds": 45},
            "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"]),
        }
    )
    assert updated.ack_deadline_seconds == 45
    assert updated.labels["env"] == "test"
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.update_subscription(
            request={
                "subscription": {"name": sub, "topic": topic},
                "update_mask": field_mask_pb2.FieldMask(paths=["topic"]),
            }
        )
    listed = [s.name for s in subscriber.list_subscriptions(request={"project": f"projects/{PROJECT}"})]
    assert sub in listed
    subscriber.modify_push_config(
        request={"subscription": sub, "push_config": {"push_endpoint": "http://127.0.0.1:1/push"}}
    )
    assert (
        subscriber.get_subscription(request={"subscription": sub}).push_config.push_endpoint
        == "http://127.0.0.1:1/push"
    )
    # a detached subscription keeps its definition and delivers nothing
    publisher.detach_subscription(request={"subscription": sub})
    assert subscriber.get_subscription(request={"subscription": sub}).detached
    # every gateway notices within its 2 s definition cache

    def refused():
        try:
            subscriber.pull(request={"subscription": sub, "max_messages": 1, "return_immediately": True})
        except exceptions.FailedPrecondition:
            return True
        return False

    wait_until("pulls of the detached subscription refused", refused, timeout=10)
    subscriber.delete_subscription(request={"subscription": sub})
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(request={"subscription": sub})

    def gone():
        try:
            subscriber.pull(request={"subscription": sub, "max_messages": 1, "return_immediately": True})
        except exceptions.NotFound:
            return True
        except exceptions.FailedPrecondition:
            return False  # a gateway's cached definition, for up to 2 s
        return False

    wait_until("pulls of the deleted subscription NOT_FOUND", gone, timeout=10)


def test_publish_pull_ack_with_attributes(cluster, names):
    topic, sub = names
    publisher, subscriber = create(cluster, names)
    ids = [
        publisher.publish(topic, f"m{i}".encode(), index=str(i)).result(timeout=30)
        for i in range(50)
    ]
    assert len(set(ids)) == 50
    got = pull_all(subscriber, sub, 50)
    assert sorted(int(m.message.attributes["index"]) for m in got) == list(range(50))
    assert {m.message.message_id for m in got} == set(ids)
    assert all(m.message.publish_time.timestamp() > time.time() - 120 for m in got)
    # everything was acknowledged: nothing comes back
    r = subscriber.pull(request={"subscription": sub, "max_messages": 10, "return_immediately": True})
    assert len(r.received_messages) == 0
    # messages published before a subscription existed are not delivered to it
    late = sub + "-late"
    subscriber.create_subscription(request={"name": late, "topic": topic})
    r = subscriber.pull(request={"subscription": late, "max_messages": 10, "return_immediately": True})
    assert len(r.received_messages) == 0


def test_nack_and_deadline_expiry_redeliver_with_attempts(cluster, names):
    topic, sub = names
    publisher, subscriber = create(cluster, names, ack_deadline_seconds=10)
    publisher.publish(topic, b"nacked").result(timeout=30)
    publisher.publish(topic, b"expired").result(timeout=30)
    first = pull_all(subscriber, sub, 2, ack=False)
    assert sorted(m.message.data for m in first) == [b"expired", b"nacked"]
    assert all(m.delivery_attempt == 1 for m in first)
    by_data = {m.message.data: m for m in first}
    # nack one at once (deadline 0); let the other's 10 s deadline run out
    subscriber.modify_ack_deadline(
        request={"subscription": sub, "ack_ids": [by_data[b"nacked"].ack_id], "ack_deadline_seconds": 0}
    )
    again = pull_all(subscriber, sub, 1, ack=False, timeout=5)
    assert [m.message.data for m in again] == [b"nacked"]
    assert again[0].delivery_attempt == 2
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [again[0].ack_id]})
    t0 = time.time()
    expired = pull_all(subscriber, sub, 1, ack=False, timeout=25)
    assert [m.message.data for m in expired] == [b"expired"]
    assert expired[0].delivery_attempt == 2
    assert time.time() - t0 > 5, "redelivered before its deadline ran out"
    # a deadline extension keeps the lease
    subscriber.modify_ack_deadline(
        request={"subscription": sub, "ack_ids": [expired[0].ack_id], "ack_deadline_seconds": 60}
    )
    r = subscriber.pull(request={"subscription": sub, "max_messages": 10, "return_immediately": True})
    assert len(r.received_messages) == 0
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [expired[0].ack_id]})


def test_streaming_pull_keeps_order_per_key(cluster, names):
    topic, sub = names
    publisher = cluster.publisher(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    subscriber = cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "enable_message_ordering": True}
    )
    keys = [f"key-{k}" for k in range(6)]
    per_key = 40
    futures = [
        publisher.publish(topic, f"{k}:{i}".encode(), ordering_key=k)
        for i in range(per_key)
        for k in keys
    ]
    for f in futures:
        f.result(timeout=60)
    seen = defaultdict(list)
    lock = threading.Lock()

    def callback(m):
        k, i = m.data.decode().split(":")
        assert m.ordering_key == k
        with lock:
            seen[k].append(int(i))
        m.ack()

    stream = subscriber.subscribe(sub, callback)
    try:
        wait_until(
            "every message received",
            lambda: sum(len(v) for v in seen.values()) >= per_key * len(keys),
            timeout=60,
        )
    finally:
        stream.cancel()
    for k in keys:
        assert seen[k] == list(range(per_key)), f"{k} out of order: {seen[k]}"


def test_snapshots_and_seek(cluster, names):
    topic, sub = names
    publisher, subscriber = create(cluster, names)
    for i in range(10):
        publisher.publish(topic, f"a{i}".encode()).result(timeout=30)
    snap = f"projects/{PROJECT}/snapshots/{sub.rsplit('/', 1)[1]}"
    created = subscriber.create_snapshot(request={"name": snap, "subscription": sub})
    assert created.topic == topic
    assert subscriber.get_snapshot(request={"snapshot": snap}).name == snap
    with pytest.raises(exceptions.AlreadyExists):
        subscriber.create_snapshot(request={"name": snap, "subscription": sub})
    assert snap in [s.name for s in subscriber.list_snapshots(request={"project": f"projects/{PROJECT}"})]
    assert snap in list(publisher.list_topic_snapshots(request={"topic": topic}))
    assert len(pull_all(subscriber, sub, 10)) == 10
    # back to the snapshot: the 10 acknowledged since are delivered again
    subscriber.seek(request={"subscription": sub, "snapshot": snap})
    assert sorted(m.message.data for m in pull_all(subscriber, sub, 10)) == sorted(
        f"a{i}".encode() for i in range(10)
    )
    # seek to a time: what was published after it comes back, nothing before it
    time.sleep(0.05)
    cut = timestamp_pb2.Timestamp()
    cut.GetCurrentTime()
    time.sleep(0.05)
    for i in range(5):
        publisher.publish(topic, f"b{i}".encode()).result(timeout=30)
    assert len(pull_all(subscriber, sub, 5)) == 5
    subscriber.seek(request={"subscription": sub, "time": cut})
    again = pull_all(subscriber, sub, 5)
    assert sorted(m.message.data for m in again) == sorted(f"b{i}".encode() for i in range(5))
    r = subscriber.pull(request={"subscription": sub, "max_messages": 10, "return_immediately": True})
    assert len(r.received_messages) == 0
    subscriber.update_snapshot(
        request={
            "snapshot": {"name": snap, "labels": {"k": "v"}},
            "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
        }
    )
    subscriber.delete_snapshot(request={"snapshot": snap})
    with pytest.raises(exceptions.NotFound):
        subscriber.get_snapshot(request={"snapshot": snap})


def test_exactly_once_confirms_acks(cluster, names):
    topic, sub = names
    publisher, subscriber = create(cluster, names, enable_exactly_once_delivery=True)
    assert subscriber.get_subscription(request={"subscription": sub}).enable_exactly_once_delivery
    for i in range(20):
        publisher.publish(topic, f"e{i}".encode()).result(timeout=30)
    results = []
    lock = threading.Lock()

    def callback(m):
        f = m.ack_with_response()
        with lock:
            results.append((m.data, f))

    stream = subscriber.subscribe(sub, callback)
    try:
        wait_until("20 messages", lambda: len(results) >= 20, timeout=60)
        for _, f in results:
            f.result(timeout=30)
    finally:
        stream.cancel()
    assert sorted(d for d, _ in results) == sorted(f"e{i}".encode() for i in range(20))


def test_failover_redelivers_only_the_unacked(cluster, names):
    topic, sub = names
    weir_topic = topic.split("/")[1] + "." + topic.split("/")[3]
    publisher = cluster.publisher(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    subscriber = cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": sub, "topic": topic, "ack_deadline_seconds": 60})
    for i in range(30):
        publisher.publish(topic, f"f{i}".encode(), ordering_key="one-key").result(timeout=30)
    first = pull_all(subscriber, sub, 30, ack=False)
    assert len(first) == 30
    partition = int(first[0].message.message_id) >> 48
    acked = [m for m in first if int(m.message.data[1:]) < 20]
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [m.ack_id for m in acked]})
    time.sleep(0.5)  # the leader stores cursors every 100 ms
    leader = cluster.leaders(weir_topic)[partition]
    cluster.kill_node(leader)
    try:
        wait_until(
            "a new leader",
            lambda: cluster.leaders(weir_topic)[partition] not in (leader, 0),
            timeout=30,
        )
        # the 10 unacked come again (their leases died with the leader); none of the 20 acked
        again = pull_all(subscriber, sub, 10, ack=True, timeout=30)
        extra = subscriber.pull(
            request={"subscription": sub, "max_messages": 100, "return_immediately": True}
        ).received_messages
        assert sorted(m.message.data for m in again + list(extra)) == sorted(
            f"f{i}".encode() for i in range(20, 30)
        )
    finally:
        cluster.start_node(leader)
        cluster.wait_node_ready(leader, timeout=60)


def stream_under_fault(cluster, names, fault, heal, count=3000, gateways=(1, 2)):
    """A streaming subscriber acks while `count` messages are published at a steady pace;
    `fault` runs once a third has arrived, with messages still flowing. Returns the data
    received, repeats included."""
    topic, sub = names
    topic, sub = names
    publisher = cluster.publisher()
    publisher.create_topic(request={"name": topic})
    # the stream uses the first gateway while it lives, then the next
    subscriber = cluster.subscriber(gateways, balance=False)
    subscriber.create_subscription(request={"name": sub, "topic": topic, "ack_deadline_seconds": 10})
    received = []
    lock = threading.Lock()

    def callback(m):
        with lock:
            received.append(m.data)
        m.ack()

    stream = subscriber.subscribe(
        sub, callback, flow_control=pubsub_v1.types.FlowControl(max_messages=200)
    )
    published = []

    def publish():
        for i in range(count):
            published.append(publisher.publish(topic, f"{i}".encode()))
            if i % 50 == 49:
                time.sleep(0.1)

    writer = threading.Thread(target=publish)
    try:
        writer.start()
        try:
            wait_until("a third received", lambda: len(received) > count // 3, timeout=60)
        except AssertionError:
            done = sum(1 for f in list(published) if f.done())
            raise AssertionError(f"received {len(received)}, published {len(published)}, done {done}")
        fault()
        writer.join()
        for f in published:
            f.result(timeout=60)
        heal()
        wait_until("every message received", lambda: len(set(received)) >= count, timeout=120)
        # past the ack deadline: a lease the fault orphaned would be redelivered by now
        time.sleep(12)
    finally:
        writer.join()
        stream.cancel()
    return received


def test_gateway_killed_mid_stream(cluster, names):
    received = stream_under_fault(
        cluster, names, fault=lambda: cluster.kill_gateway(1), heal=lambda: None
    )
    cluster.start_gateway(1)
    distinct = set(received)
    assert len(distinct) == 3000, "messages lost"
    # only what was leased to the killed gateway's stream and not yet acked comes again
    repeats = len(received) - len(distinct)
    print(f"gateway kill: {repeats} redeliveries of 3000")
    assert repeats <= 300


def test_partition_leader_killed_under_streaming_pull(cluster, names):
    topic, _ = names
    weir_topic = topic.split("/")[1] + "." + topic.split("/")[3]
    victim = {}

    def fault():
        # the leader of every partition takes messages (keyless publishes are spread)
        leaders = cluster.leaders(weir_topic)
        victim["node"] = leaders[0]
        cluster.kill_node(leaders[0])

    def heal():
        cluster.start_node(victim["node"])

    received = stream_under_fault(cluster, names, fault=fault, heal=heal)
    cluster.wait_node_ready(victim["node"], timeout=60)
    distinct = set(received)
    assert len(distinct) == 3000, "messages lost"
    repeats = len(received) - len(distinct)
    print(f"leader kill: {repeats} redeliveries of 3000")
    # the unacked leases of the dead leader's partitions and its last 100 ms of acks
    assert repeats <= 250


def test_cli_describes_backlog_and_oldest_unacked(cluster, names):
    topic, sub = names
    publisher, subscriber = create(cluster, names)
    for i in range(12):
        publisher.publish(topic, f"c{i}".encode()).result(timeout=30)
    weir_sub = sub.split("/")[1] + "." + sub.split("/")[3]

    def rows():
        out = cluster.weir("subscription", "describe", weir_sub)
        return [line.split() for line in out.splitlines()[2:]], out

    table, out = rows()
    assert sum(int(r[4]) for r in table) == 12, out
    # every partition with a backlog shows the age of its oldest unacked message
    assert all(r[5].endswith("s") for r in table if int(r[4]) > 0), out
    pull_all(subscriber, sub, 12)
    table, out = rows()
    assert sum(int(r[4]) for r in table) == 0, out
    assert all(r[5] == "-" for r in table), out
    assert weir_sub in cluster.weir("subscription", "list")


def test_metrics_show_backlog_and_oldest_unacked_age(cluster, names):
    """The partition leaders' /metrics: per subscription backlog and the age of the oldest
    unacknowledged message, back to zero once everything is acknowledged."""
    import urllib.request

    topic, sub = names
    publisher, subscriber = create(cluster, names)
    weir_sub = sub.split("/")[1] + "." + sub.split("/")[3]

    def gauge(name):
        values = []
        for i in list(cluster.nodes):
            with urllib.request.urlopen(f"http://127.0.0.1:{cluster.http[i]}/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(name + "{") and f'subscription="{weir_sub}"' in line:
                        values.append(float(line.rsplit(" ", 1)[1]))
        return values

    for i in range(6):
        publisher.publish(topic, f"m{i}".encode()).result(timeout=30)
    # a pull makes the leaders load the subscription; nothing is acknowledged yet
    r = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=15)
    assert r.received_messages
    wait_until("oldest unacked age above 2 s",
               lambda: max(gauge("weir_subscription_oldest_unacked_message_age_seconds") or [0]) > 2.0, timeout=20)
    assert sum(gauge("weir_subscription_backlog_messages")) == 6
    pull_all(subscriber, sub, 6 - len(r.received_messages))
    subscriber.acknowledge(request={"subscription": sub, "ack_ids": [m.ack_id for m in r.received_messages]})
    wait_until("backlog and age back to zero",
               lambda: sum(gauge("weir_subscription_backlog_messages")) == 0
               and max(gauge("weir_subscription_oldest_unacked_message_age_seconds") or [1]) == 0.0, timeout=20)
