"""CloudEvents over HTTP with the `cloudevents` Python SDK: events sent in binary, structured
and batch mode to the gateway's ingest, read back as Pub/Sub messages (the CloudEvents
Pub/Sub binding's `ce-` attributes) and pushed to sinks as CloudEvents in both modes."""

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent, from_http
from google.api_core import exceptions

from conftest import wait_until


class Sink:
    def __init__(self):
        self.events = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.events.append(from_http(dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def post(url, headers, body):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_cloudevents_in_and_out_in_both_modes(cluster, names):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    sinks = {"binary": Sink(), "structured": Sink()}
    for mode, sink in sinks.items():
        subscriber.create_subscription(
            request={
                "name": f"{sub}-{mode}",
                "topic": topic,
                "push_config": {"push_endpoint": sink.url, "attributes": {"cloudevents": mode}},
            }
        )
    subscriber.create_subscription(request={"name": sub, "topic": topic})
    url = f"http://127.0.0.1:{cluster.gateway_http[1]}/v1/{topic}:cloudevents"
    sent = [
        CloudEvent(
            {"type": "com.example.order", "source": "/shop", "partitionkey": "cust-7",
             "datacontenttype": "application/json"},
            {"order": 1},
        ),
        CloudEvent(
            {"type": "com.example.refund", "source": "/shop", "subject": "r-9",
             "datacontenttype": "application/json"},
            {"refund": 2},
        ),
    ]
    status, body = post(url, *to_binary(sent[0]))
    assert status == 200, body
    assert len(json.loads(body)["messageIds"]) == 1
    status, body = post(url, *to_structured(sent[1]))
    assert status == 200, body
    batch = [json.loads(to_structured(CloudEvent({"type": "b", "source": "/batch"}, f"item-{i}"))[1])
             for i in range(3)]
    status, body = post(url, {"content-type": "application/cloudevents-batch+json"}, json.dumps(batch).encode())
    assert status == 200, body
    assert len(json.loads(body)["messageIds"]) == 3
    # bad events are refused, naming what is wrong
    status, body = post(url, {"ce-id": "1", "ce-source": "/s", "ce-specversion": "1.0"}, b"x")
    assert status == 400 and b'"type"' in body
    status, body = post(f"http://127.0.0.1:{cluster.gateway_http[1]}/v1/projects/weir-test/topics/nope:cloudevents",
                        *to_binary(sent[0]))
    assert status == 404

    # as Pub/Sub messages: the binding's ce- attributes, the partition key as ordering key
    got = []
    deadline = time.time() + 20
    while len(got) < 5 and time.time() < deadline:
        r = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=15)
        got.extend(r.received_messages)
    by_type = {m.message.attributes["ce-type"]: m.message for m in got}
    order = by_type["com.example.order"]
    assert order.attributes["ce-id"] == sent[0]["id"]
    assert order.attributes["ce-source"] == "/shop"
    assert order.attributes["content-type"] == "application/json"
    assert order.ordering_key == "cust-7"
    assert json.loads(order.data) == {"order": 1}

    # pushed as CloudEvents, both modes, read back by the SDK
    for mode, sink in sinks.items():
        wait_until(f"{mode} sink got 5 events", lambda: len(sink.events) >= 5, timeout=30)
        events = {e["id"]: e for e in sink.events}
        for s in sent:
            e = events[s["id"]]
            assert e["type"] == s["type"] and e["source"] == s["source"], mode
            assert e.data == s.data, (mode, e.data)
        assert events[sent[0]["id"]]["partitionkey"] == "cust-7"
        assert events[sent[1]["id"]]["subject"] == "r-9"


def test_plain_messages_are_pushed_as_pubsub_events(cluster, names):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    sink = Sink()
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "push_config": {"push_endpoint": sink.url, "attributes": {"cloudevents": "binary"}},
        }
    )
    mid = publisher.publish(topic, b"plain").result(timeout=30)
    wait_until("pushed", lambda: len(sink.events) >= 1, timeout=30)
    e = sink.events[0]
    assert e["id"] == mid
    assert e["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert e["source"] == f"//pubsub.googleapis.com/{topic}"


def test_trigger_filters_and_cesql_select_events(cluster, names):
    """Knative Trigger filters (exact, prefix, suffix, any, not, CESQL) on a push
    subscription delivering CloudEvents: only matching events reach the sink; the others are
    acknowledged without delivery. A bad filter is refused naming the field."""
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    sink, cesql_sink = Sink(), Sink()
    filters = [
        {"prefix": {"type": "com.example."}},
        {"any": [{"exact": {"source": "/shop"}}, {"suffix": {"subject": ".pdf"}}]},
        {"not": {"exact": {"priority": "low"}}},
    ]
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "filter": json.dumps(filters),
                 "push_config": {"push_endpoint": sink.url, "attributes": {"cloudevents": "structured"}}}
    )
    subscriber.create_subscription(
        request={"name": sub + "-cesql", "topic": topic,
                 "filter": "cesql: EXISTS size AND INT(size) > 1024 AND type LIKE 'com.example.%'",
                 "push_config": {"push_endpoint": cesql_sink.url, "attributes": {"cloudevents": "binary"}}}
    )
    for bad, says in [("[]", "at least one filter"), ('[{"regex": {}}]', "unknown dialect"),
                      ("cesql: a LIKE 1", "CESQL")]:
        with pytest.raises(exceptions.InvalidArgument) as e:
            subscriber.create_subscription(request={"name": sub + "-bad", "topic": topic, "filter": bad})
        assert "filter" in str(e.value) and says in str(e.value), str(e.value)

    url = f"http://127.0.0.1:{cluster.gateway_http[1]}/v1/{topic}:cloudevents"
    events = {
        "shop": ({"type": "com.example.order", "source": "/shop", "size": "2048"}, True, True),
        "pdf": ({"type": "com.example.doc", "source": "/docs", "subject": "a.pdf"}, True, False),
        "low": ({"type": "com.example.order", "source": "/shop", "priority": "low", "size": "10"}, False, False),
        "other-type": ({"type": "org.other", "source": "/shop", "size": "4096"}, False, False),
        "other-source": ({"type": "com.example.order", "source": "/else", "size": "4096"}, False, True),
    }
    for key, (attrs, _, _) in events.items():
        status, body = post(url, *to_binary(CloudEvent(attrs | {"id": key}, {"k": key})))
        assert status == 200, body
    # a plain message is Pub/Sub's messagePublished event: neither filter passes it
    publisher.publish(topic, b"plain").result(timeout=30)

    want = {k for k, (_, t, _) in events.items() if t}
    want_cesql = {k for k, (_, _, c) in events.items() if c}
    wait_until("trigger filters delivered", lambda: {e["id"] for e in sink.events} >= want, timeout=30)
    wait_until("CESQL delivered", lambda: {e["id"] for e in cesql_sink.events} >= want_cesql, timeout=30)
    time.sleep(2)  # nothing else comes
    assert {e["id"] for e in sink.events} == want
    assert {e["id"] for e in cesql_sink.events} == want_cesql
    # the filtered-out ones were acknowledged: the backlog drains to zero
    weir_sub = sub.replace("projects/", "").replace("/subscriptions/", ".")
    wait_until("backlog drained", lambda: cluster.backlog(weir_sub) == 0, timeout=20)
