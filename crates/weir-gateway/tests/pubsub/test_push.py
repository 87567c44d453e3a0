"""Push subscriptions with Google's client library creating them and a real HTTP endpoint
(stdlib server) that fails chosen messages: backoff between attempts, the dead-letter topic
after max attempts, Google's JSON envelope and the unwrapped form."""

import base64
import json
import os
import tempfile
import ssl
import threading
import time
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.cloud import pubsub_v1

from conftest import PROJECT, wait_until


class Endpoint:
    """Answers 500 to a message's first `fail` attempts (from its `fail` attribute; "all"
    fails forever), 204 after; records every request."""

    def __init__(self, delay=0.0, tls=None):
        self.delay = delay
        self.calls = defaultdict(list)  # message id -> [(time, attempt, body, headers)]
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-type") == "application/json":
                    env = json.loads(body)
                    msg = env["message"]
                    key, attempt, fail = msg["messageId"], env["deliveryAttempt"], msg["attributes"].get("fail", "0")
                else:
                    key = self.headers["x-goog-pubsub-message-id"]
                    attempt, fail, env = 0, self.headers.get("fail", "0"), None
                with endpoint.lock:
                    endpoint.calls[key].append((time.time(), attempt, env if env else body, dict(self.headers)))
                    n = len(endpoint.calls[key])
                failing = fail == "all" or n <= int(fail)
                time.sleep(endpoint.delay)
                self.send_response(500 if failing else 204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_data(self):
        out = {}
        with self.lock:
            for calls in self.calls.values():
                env = calls[0][2]
                data = base64.b64decode(env["message"]["data"]) if isinstance(env, dict) else env
                out[data] = calls
        return out


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.server.shutdown()


@pytest.fixture
def slow_endpoint():
    """Answers after 50 ms, so pushes are in flight when a gateway dies."""
    e = Endpoint(delay=0.05)
    yield e
    e.server.shutdown()


def test_push_retries_with_backoff_then_dead_letters(cluster, names, endpoint):
    topic, sub = names
    dlq = topic + "-dlq"
    dlq_sub = sub + "-dlq"
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    publisher.create_topic(request={"name": dlq})
    subscriber.create_subscription(request={"name": dlq_sub, "topic": dlq})
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "push_config": {"push_endpoint": endpoint.url},
            "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 4}},
            "dead_letter_policy": {"dead_letter_topic": dlq, "max_delivery_attempts": 5},
        }
    )
    publisher.publish(topic, b"ok", kind="plain").result(timeout=30)
    publisher.publish(topic, b"twice", fail="2").result(timeout=30)
    publisher.publish(topic, b"dead", fail="all").result(timeout=30)
    wait_until("the good ones acknowledged", lambda: len(endpoint.by_data().get(b"twice", [])) >= 3, timeout=40)
    # the dead one: five attempts, then the dead-letter topic, with its attempt count
    got = []

    def dead_lettered():
        r = subscriber.pull(request={"subscription": dlq_sub, "max_messages": 10, "return_immediately": True})
        got.extend(r.received_messages)
        return len(got) >= 1

    wait_until("the dead letter", dead_lettered, timeout=60)
    calls = endpoint.by_data()
    assert len(calls[b"ok"]) == 1
    assert calls[b"ok"][0][2]["message"]["attributes"] == {"kind": "plain"}
    assert calls[b"ok"][0][2]["subscription"] == sub
    env = calls[b"ok"][0][2]
    assert env["message"]["messageId"] == env["message"]["message_id"]
    assert env["message"]["publishTime"].endswith("Z")
    # backoff: 1 s after the first failure, 2 s after the second (doubling from the minimum)
    times = [t for t, _, _, _ in calls[b"twice"]]
    attempts = [a for _, a, _, _ in calls[b"twice"]]
    assert attempts == [1, 2, 3]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.9 <= gaps[0] <= 3.0, gaps
    assert 1.8 <= gaps[1] <= 4.5, gaps
    dead_attempts = [a for _, a, _, _ in calls[b"dead"]]
    assert dead_attempts == [1, 2, 3, 4, 5]
    dead_gaps = [b - a for a, b in zip([t for t, *_ in calls[b"dead"]], [t for t, *_ in calls[b"dead"]][1:])]
    assert all(g >= 0.9 for g in dead_gaps) and dead_gaps[-1] >= 3.6, dead_gaps
    (m,) = got
    assert m.message.data == b"dead"
    assert m.message.attributes["fail"] == "all"
    assert m.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert m.message.attributes["CloudPubSubDeadLetterSourceSubscription"] == sub.rsplit("/", 1)[1]
    subscriber.acknowledge(request={"subscription": dlq_sub, "ack_ids": [m.ack_id]})
    # acknowledged on the source: no sixth attempt
    time.sleep(5)
    assert len(endpoint.by_data()[b"dead"]) == 5


def test_push_unwrapped_with_metadata(cluster, names, endpoint):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "push_config": {
                "push_endpoint": endpoint.url,
                "no_wrapper": {"write_metadata": True},
            },
        }
    )
    mid = publisher.publish(topic, b"raw body", color="blue").result(timeout=30)
    wait_until("pushed", lambda: len(endpoint.by_data()) >= 1, timeout=30)
    (calls,) = endpoint.by_data().values()
    _, _, body, headers = calls[0]
    assert body == b"raw body"
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["x-goog-pubsub-message-id"] == mid
    assert headers["x-goog-pubsub-subscription-name"] == sub
    assert headers["color"] == "blue"


def test_filters_deliver_only_matching_and_ack_the_rest(cluster, names):
    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    with pytest.raises(Exception) as bad:
        subscriber.create_subscription(
            request={"name": sub, "topic": topic, "filter": 'attributes.k = unquoted'}
        )
    assert "filter" in str(bad.value)
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "filter": '(attributes.kind = "order" OR hasPrefix(attributes.kind, "pay")) AND NOT attributes:test',
        }
    )
    pull_sub = sub + "-pull"
    subscriber.create_subscription(
        request={"name": pull_sub, "topic": topic, "filter": 'attributes:kind AND attributes.kind != "order"'}
    )
    sent = [
        ("order", {}), ("payment", {}), ("refund", {}), ("order", {"test": "1"}), ("none", None),
    ]
    for data, extra in sent:
        attrs = {} if extra is None else {"kind": data, **extra}
        publisher.publish(topic, data.encode(), **attrs).result(timeout=30)
    got = []
    deadline = time.time() + 20
    while time.time() < deadline and len(got) < 2:
        r = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=15)
        got.extend(r.received_messages)
        if r.received_messages:
            subscriber.acknowledge(request={"subscription": sub, "ack_ids": [m.ack_id for m in r.received_messages]})
    assert sorted(m.message.data for m in got) == [b"order", b"payment"]
    r = subscriber.pull(request={"subscription": sub, "max_messages": 10, "return_immediately": True})
    assert len(r.received_messages) == 0
    # the second subscription: kind present and not "order"
    other = []
    deadline = time.time() + 20
    while time.time() < deadline and len(other) < 2:
        r = subscriber.pull(request={"subscription": pull_sub, "max_messages": 10}, timeout=15)
        other.extend(r.received_messages)
        if r.received_messages:
            subscriber.acknowledge(
                request={"subscription": pull_sub, "ack_ids": [m.ack_id for m in r.received_messages]}
            )
    assert sorted(m.message.data for m in other) == [b"payment", b"refund"]
    r = subscriber.pull(request={"subscription": pull_sub, "max_messages": 10, "return_immediately": True})
    assert len(r.received_messages) == 0


def test_gateway_killed_while_pushing(cluster, names, slow_endpoint):
    """Both gateways push; one is killed mid-way. Nothing is lost; what it held is pushed
    again by the other once its leases run out (ack deadline 10 s)."""
    topic, sub = names
    endpoint = slow_endpoint
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "push_config": {"push_endpoint": endpoint.url},
                 "ack_deadline_seconds": 10}
    )
    count = 600
    futures = []
    weir_sub = sub.replace("projects/", "").replace("/subscriptions/", ".")
    killed = False
    try:
        for i in range(count):
            futures.append(publisher.publish(topic, f"p{i}".encode()))
            # kill a gateway once both push, so the dead one holds leases
            if not killed and i >= count // 3 and i % 10 == 0 and all(
                cluster.pushes(g, weir_sub) > 0 for g in (1, 2)
            ):
                print("pushes before the kill:", {g: cluster.pushes(g, weir_sub) for g in (1, 2)})
                cluster.kill_gateway(1)
                killed = True
            time.sleep(0.02)
        assert killed, "the gateways never both pushed"
        for f in futures:
            f.result(timeout=60)
        try:
            wait_until("every message pushed", lambda: len(endpoint.by_data()) >= count, timeout=90)
        except AssertionError:
            missing = sorted({f"p{i}".encode() for i in range(count)} - set(endpoint.by_data()))
            print("never pushed:", missing[:50], "of", len(missing))
            print(cluster.weir("subscription", "describe", weir_sub))
            print("gateway 2 alive:", cluster.gateways[2].poll() is None)
            with open(os.path.join(cluster.root, "gateway-2.log"), "rb") as f:
                print(f.read()[-4000:].decode(errors="replace"))
            raise
    finally:
        cluster.start_gateway(1)
    calls = endpoint.by_data()
    assert set(calls) == {f"p{i}".encode() for i in range(count)}
    repeats = sum(len(c) - 1 for c in calls.values())
    print(f"push with a gateway killed: {repeats} repeated pushes of {count}")
    # only what the dead gateway had leased and not yet acked
    assert repeats <= 150


def test_push_carries_an_oidc_token_that_google_auth_verifies(cluster, names, endpoint):
    """A push config with an OIDC service account: each push has `Authorization: Bearer`
    with a token that google-auth verifies against the gateway's JWKS (as a Cloud Run
    service would), for the configured audience; without one, no header."""
    import google.auth.transport.requests
    from google.oauth2 import id_token

    topic, sub = names
    publisher, subscriber = cluster.publisher(), cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    sa = "pusher@weir-test.iam.gserviceaccount.com"
    subscriber.create_subscription(
        request={"name": sub, "topic": topic,
                 "push_config": {"push_endpoint": endpoint.url,
                                 "oidc_token": {"service_account_email": sa, "audience": "https://orders.example"}}}
    )
    subscriber.create_subscription(
        request={"name": sub + "-default-aud", "topic": topic,
                 "push_config": {"push_endpoint": endpoint.url + "?aud=default",
                                 "oidc_token": {"service_account_email": sa}}}
    )
    subscriber.create_subscription(
        request={"name": sub + "-none", "topic": topic, "push_config": {"push_endpoint": endpoint.url + "?none"}}
    )
    got = subscriber.get_subscription(request={"subscription": sub})
    assert got.push_config.oidc_token.service_account_email == sa
    assert got.push_config.oidc_token.audience == "https://orders.example"
    for i in range(4):
        publisher.publish(topic, f"signed-{i}".encode()).result(timeout=30)
    wait_until("all pushed to the three subscriptions",
               lambda: sum(len(c) for c in endpoint.calls.values()) >= 12, timeout=30)
    request = google.auth.transport.requests.Request()
    auth = {}
    for calls in endpoint.calls.values():
        for _, _, env, headers in calls:
            lower = {k.lower(): v for k, v in headers.items()}
            auth.setdefault(env["subscription"], []).append(lower.get("authorization"))
    assert all(h is None for h in auth[sub + "-none"])
    for g in (1, 2):
        certs = f"http://127.0.0.1:{cluster.gateway_http[g]}/.well-known/jwks.json"
        for header in auth[sub]:
            assert header.startswith("Bearer ")
            claims = id_token.verify_token(header[7:], request, audience="https://orders.example", certs_url=certs)
            assert claims["email"] == sa and claims["email_verified"] is True
            assert claims["iss"].startswith("http://127.0.0.1:")
        for header in auth[sub + "-default-aud"]:
            claims = id_token.verify_token(header[7:], request, audience=endpoint.url + "?aud=default",
                                           certs_url=certs)
            assert claims["aud"] == endpoint.url + "?aud=default"
    # the wrong audience, or a tampered token, is refused
    token = auth[sub][0][7:]
    with pytest.raises(Exception):
        id_token.verify_token(token, request, audience="https://other.example", certs_url=certs)
    head, body, sig = token.split(".")
    forged = ".".join([head, body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB"), sig])
    with pytest.raises(Exception):
        id_token.verify_token(forged, request, audience="https://orders.example", certs_url=certs)
    # the discovery document names the keys
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.gateway_http[1]}/.well-known/openid-configuration") as r:
        conf = json.loads(r.read())
    assert conf["jwks_uri"].endswith("/.well-known/jwks.json")
    assert conf["id_token_signing_alg_values_supported"] == ["ES256"]


def test_push_to_an_https_endpoint(cluster, names):
    """An https endpoint (a certificate the gateways trust through --push-ca-file) gets the
    pushes; one whose certificate they do not trust gets none and the messages stay
    unacknowledged."""
    endpoint = Endpoint(tls=(cluster.endpoint_cert, cluster.endpoint_key))
    untrusted_dir = tempfile.mkdtemp(prefix="weir-untrusted-")
    from conftest import make_ca
    untrusted = Endpoint(tls=make_ca(untrusted_dir)[1:])
    try:
        topic, sub = names
        publisher, subscriber = cluster.publisher(), cluster.subscriber()
        publisher.create_topic(request={"name": topic})
        subscriber.create_subscription(
            request={"name": sub, "topic": topic, "push_config": {"push_endpoint": endpoint.url}})
        subscriber.create_subscription(
            request={"name": sub + "-untrusted", "topic": topic,
                     "push_config": {"push_endpoint": untrusted.url}})
        for i in range(3):
            publisher.publish(topic, f"tls-{i}".encode()).result(timeout=30)
        wait_until("pushed over https", lambda: len(endpoint.by_data()) >= 3, timeout=30)
        assert set(endpoint.by_data()) == {b"tls-0", b"tls-1", b"tls-2"}
        time.sleep(2)
        assert untrusted.calls == {}
        weir_sub = (sub + "-untrusted").replace("projects/", "").replace("/subscriptions/", ".")
        assert cluster.backlog(weir_sub) == 3
    finally:
        endpoint.server.shutdown()
        untrusted.server.shutdown()


def test_ordered_push_keeps_order_under_retries(cluster, names, endpoint):
    """An ordered push subscription with an endpoint that fails one message of one key
    twice: for that key nothing later is pushed until the message succeeds; every key's
    successes come in publish order; keys of other partitions go on meanwhile."""
    topic, sub = names
    publisher = cluster.publisher(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    subscriber = cluster.subscriber()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "enable_message_ordering": True,
                 "push_config": {"push_endpoint": endpoint.url},
                 "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 2}}}
    )
    keys, per_key, failing = [f"k{k}" for k in range(8)], 6, 2
    futures = [
        publisher.publish(topic, f"{k}:{i}".encode(), ordering_key=k,
                          fail="2" if (k, i) == ("k0", failing) else "0")
        for i in range(per_key)
        for k in keys
    ]
    for f in futures:
        f.result(timeout=60)
    wait_until("every message pushed", lambda: len(endpoint.by_data()) >= per_key * len(keys)
               and len(endpoint.by_data().get(f"k0:{failing}".encode(), [])) >= 3, timeout=60)
    time.sleep(1)
    with endpoint.lock:
        calls = sorted(
            (t, base64.b64decode(env["message"]["data"]).decode())
            for cs in endpoint.calls.values() for (t, _, env, _) in cs
        )
    by_key = {k: [(t, int(d.split(":")[1])) for t, d in calls if d.split(":")[0] == k] for k in keys}
    k0 = by_key["k0"]
    tries = [t for t, i in k0 if i == failing]
    assert len(tries) == 3, k0
    assert min(t for t, i in k0 if i > failing) > tries[-1], f"k0 went on past a failing message: {k0}"
    for k, mine in by_key.items():
        last = {}
        for t, i in mine:
            last[i] = t
        assert sorted(last, key=last.get) == list(range(per_key)), (k, mine)
    # some key (of another partition) was done before k0's failing message succeeded
    assert any(max(t for t, _ in mine) < tries[-1] for k, mine in by_key.items() if k != "k0"), by_key
