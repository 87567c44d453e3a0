"""A 3-node Weir cluster (controller + broker per node, RF 3) and two gateways on loopback,
started from the `weir` binary for the test module, with helpers to kill and restart them."""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import grpc
import pytest
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

WEIR = os.environ.get("WEIR_BIN", "weir")
PROJECT = "weir-test"


def free_base():
    # ports base..base+19, picked at random so parallel runs rarely collide, and below the
    # kernel's ephemeral range, so a restarted process finds its port free
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    for _ in range(50):
        base = random.randrange(10000, min(ephemeral_low, 60000) - 20, 20)
        ok = True
        for p in range(base, base + 20):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def wait_until(what, check, timeout=30.0, every=0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - the reason is reported on timeout
            last = e
        time.sleep(every)
    raise AssertionError(f"{what} not reached within {timeout}s (last error: {last})")


def http_ok(url):
    with urllib.request.urlopen(url, timeout=1) as r:
        return r.status == 200


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def make_ca(root):
    """A CA and a certificate it signed for 127.0.0.1 (PEM files: CA, certificate, key), for
    https push endpoints."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, public_key, signing_key, ca):
        b = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
        )
        if not ca:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        return b.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weir test CA")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    leaf = cert(leaf_name, ca_name, key.public_key(), ca_key, False)
    paths = [os.path.join(root, n) for n in ("ca.crt", "endpoint.crt", "endpoint.key")]
    for path, data in zip(paths, [
        ca.public_bytes(serialization.Encoding.PEM),
        leaf.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    ]):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class Cluster:
    def __init__(self, root):
        self.root = root
        self.ca, self.endpoint_cert, self.endpoint_key = make_ca(root)
        base = free_base()
        self.controller = {i: base + i for i in (1, 2, 3)}
        self.broker = {i: base + 4 + i for i in (1, 2, 3)}
        self.http = {i: base + 8 + i for i in (1, 2, 3)}
        self.gateway = {1: base + 12, 2: base + 13}
        self.gateway_http = {1: base + 14, 2: base + 15}
        self.nodes = {}
        self.gateways = {}
        self.controllers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.controller.items())
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.controller.values())

    def log(self, name):
        return open(os.path.join(self.root, f"{name}.log"), "ab")

    def start_node(self, i):
        args = [
            WEIR, "node", "--id", str(i),
            "--listen", f"127.0.0.1:{self.controller[i]}",
            "--broker-listen", f"127.0.0.1:{self.broker[i]}",
            "--controllers", self.controllers,
            "--data-dir", os.path.join(self.root, f"node-{i}"),
            "--http", f"127.0.0.1:{self.http[i]}",
            "--broker-lease-ms", "3000",
        ]
        out = self.log(f"node-{i}")
        self.nodes[i] = subprocess.Popen(args, stdout=out, stderr=out)

    def start_gateway(self, g):
        args = [
            WEIR, "gateway",
            "--listen", f"127.0.0.1:{self.gateway[g]}",
            "--bootstrap", self.bootstrap,
            "--topic-partitions", "3",
            "--replication-factor", "3",
            "--http", f"127.0.0.1:{self.gateway_http[g]}",
            # one key for both, so a push token from either verifies at either's JWKS
            "--push-signing-key", os.path.join(self.root, "push-signing.key"),
            # https push endpoints in the tests use this self-signed certificate
            "--push-ca-file", self.ca,
        ]
        out = self.log(f"gateway-{g}")
        self.gateways[g] = subprocess.Popen(args, stdout=out, stderr=out)
        wait_until(f"gateway {g} listening", lambda: port_open(self.gateway[g]))

    def wait_node_ready(self, i, timeout=30.0):
        wait_until(f"node {i} ready", lambda: http_ok(f"http://127.0.0.1:{self.http[i]}/readyz"), timeout)

    def kill_node(self, i):
        p = self.nodes.pop(i)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def kill_gateway(self, g):
        p = self.gateways.pop(g)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def pushes(self, g, weir_subscription):
        """Push responses gateway `g` has counted for a subscription (its /metrics)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.gateway_http[g]}/metrics", timeout=2) as r:
            text = r.read().decode()
        total = 0
        for line in text.splitlines():
            if line.startswith("weir_push_responses_total{") and f'subscription="{weir_subscription}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def backlog(self, weir_subscription):
        """Unacknowledged messages over all partitions (`weir subscription describe`)."""
        total, rows = 0, 0
        for line in self.weir("subscription", "describe", weir_subscription).splitlines():
            cols = line.split()
            if len(cols) == 6 and all(c.lstrip("-").isdigit() for c in cols[:5]):
                total += int(cols[4])
                rows += 1
        assert rows > 0, "describe showed no partitions"
        return total

    def weir(self, *args):
        return subprocess.run(
            [WEIR, *args, "--bootstrap", self.bootstrap],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout

    def leaders(self, weir_topic):
        """Partition -> leader node id."""
        out = self.weir("topic", "describe", weir_topic)
        return {
            int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"partition (\d+)\s+leader (\d+)", out)
        }

    def stop(self):
        for p in list(self.gateways.values()) + list(self.nodes.values()):
            p.send_signal(signal.SIGTERM)
        for p in list(self.gateways.values()) + list(self.nodes.values()):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    # Google's clients, on a channel that balances over the gateways given (round robin), so a
    # client whose gateway dies reconnects to another.
    def channel(self, gateways=(1, 2), balance=True):
        """Round robin over the gateways, or (`balance=False`) the first while it answers."""
        target = "ipv4:" + ",".join(f"127.0.0.1:{self.gateway[g]}" for g in gateways)
        # one authority for all (the default would be the address list, which HTTP/2 refuses)
        policy = "round_robin" if balance else "pick_first"
        options = [("grpc.lb_policy_name", policy), ("grpc.default_authority", "weir")]
        return grpc.insecure_channel(target, options=options)

    def publisher(self, gateways=(1, 2), **kwargs):
        return pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=self.channel(gateways)), **kwargs
        )

    def subscriber(self, gateways=(1, 2), balance=True):
        return pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=self.channel(gateways, balance))
        )


@pytest.fixture(scope="session")
def cluster():
    root = tempfile.mkdtemp(prefix="weir-pubsub-")
    c = Cluster(root)
    try:
        for i in (1, 2, 3):
            c.start_node(i)
        for i in (1, 2, 3):
            c.wait_node_ready(i)
        for g in (1, 2):
            c.start_gateway(g)
        yield c
    finally:
        c.stop()
        if os.environ.get("WEIR_KEEP_LOGS"):
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def names(request):
    """A fresh topic and subscription path per test."""
    tag = re.sub(r"[^a-z0-9]", "-", request.node.name.lower())[:40] + f"-{random.randrange(1 << 30)}"
    return (
        f"projects/{PROJECT}/topics/t-{tag}",
        f"projects/{PROJECT}/subscriptions/s-{tag}",
    )
