"""A node and a gateway with TLS on every listener, bearer tokens and ACLs, used through the
unmodified google-cloud-pubsub library on a TLS channel with token credentials: no token is
UNAUTHENTICATED, a token without an ACL PERMISSION_DENIED, `weir acl add` grants exactly what
it names, plain text to the TLS port fails promptly, and the HTTP side speaks https."""

import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from conftest import PROJECT, WEIR, free_base, port_open, wait_until

TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef",
}


def make_pki(root):
    """A CA; a certificate for node 1 (it names broker-1 and controller-1) and one for the
    gateway (principal `gateway`), both valid for 127.0.0.1. Returns the CA's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weir security test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )
    with open(os.path.join(root, "ca.crt"), "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    for name, dns in (("node-1", ["broker-1.weir", "controller-1.weir"]), ("gateway", [])):
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] + [x509.DNSName(d) for d in dns]
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName(sans), False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        with open(os.path.join(root, f"{name}.crt"), "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(root, f"{name}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return os.path.join(root, "ca.crt")


class Secured:
    def __init__(self, root):
        self.root = root
        self.ca = make_pki(root)
        with open(self.ca, "rb") as f:
            self.ca_pem = f.read()
        self.tokens = os.path.join(root, "tokens")
        with open(self.tokens, "w") as f:
            f.writelines(f"{who} {token}\n" for who, token in TOKENS.items())
        base = free_base()
        self.controller, self.broker, self.http = base, base + 1, base + 2
        self.gateway, self.gateway_http = base + 3, base + 4
        self.procs = []

    def tls(self, name):
        return ["--tls-ca", self.ca, "--tls-cert", os.path.join(self.root, f"{name}.crt"),
                "--tls-key", os.path.join(self.root, f"{name}.key")]

    def start(self):
        security = ["--auth-token-file", self.tokens, "--authorization"]
        node = [WEIR, "node", "--id", "1",
                "--listen", f"127.0.0.1:{self.controller}",
                "--broker-listen", f"127.0.0.1:{self.broker}",
                "--controllers", f"1=127.0.0.1:{self.controller}",
                "--data-dir", os.path.join(self.root, "node-1"),
                "--http", f"127.0.0.1:{self.http}",
                "--super-users", "gateway,admin", *security, *self.tls("node-1")]
        gateway = [WEIR, "gateway", "--listen", f"127.0.0.1:{self.gateway}",
                   "--bootstrap", f"127.0.0.1:{self.controller}",
                   "--topic-partitions", "2", "--replication-factor", "1",
                   "--http", f"127.0.0.1:{self.gateway_http}", "--super-users", "admin",
                   *security, *self.tls("gateway")]
        for name, args in (("node-1", node), ("gateway", gateway)):
            out = open(os.path.join(self.root, f"{name}.log"), "ab")
            self.procs.append(subprocess.Popen(args, stdout=out, stderr=out))
            if name == "node-1":
                wait_until("the node ready over https", lambda: self.https_ok(self.http, "/readyz"))
        wait_until("the gateway listening", lambda: port_open(self.gateway))

    def https_ok(self, port, path):
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=2, context=context) as r:
            return r.status == 200

    def weir(self, *args, token="admin"):
        return subprocess.run(
            [WEIR, *args, "--bootstrap", f"127.0.0.1:{self.controller}", "--tls-ca", self.ca,
             "--token", TOKENS[token]],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout

    def channel(self, token):
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(TOKENS[token]))
        return grpc.secure_channel(f"127.0.0.1:{self.gateway}", credentials)

    def publisher(self, token):
        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=self.channel(token)))

    def subscriber(self, token):
        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=self.channel(token)))

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def secured():
    root = tempfile.mkdtemp(prefix="weir-security-")
    s = Secured(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        if os.environ.get("WEIR_KEEP_LOGS"):
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def test_tokens_and_acls_decide_through_the_google_client(secured):
    topic = f"projects/{PROJECT}/topics/secure-orders"
    sub = f"projects/{PROJECT}/subscriptions/secure-orders-sub"
    admin = secured.publisher("admin")
    admin.create_topic(name=topic)

    with pytest.raises(exceptions.Unauthenticated):
        secured.publisher(None).get_topic(topic=topic, timeout=10)
    with pytest.raises(exceptions.PermissionDenied) as denied:
        secured.publisher("alice").get_topic(topic=topic, timeout=10)
    print("alice without an ACL:", denied.value.message)

    # alice may publish to the project's topics; bob may read one subscription
    secured.weir("acl", "add", "--allow", "alice", "--operation", "write", "--topic", f"{PROJECT}.*")
    secured.weir("acl", "add", "--allow", "bob", "--operation", "read", "--subscription",
                 f"{PROJECT}.secure-orders-sub")
    secured.weir("acl", "add", "--allow", "bob", "--operation", "read", "--topic",
                 f"{PROJECT}.secure-orders")
    listed = secured.weir("acl", "list", "--principal", "bob")
    assert "allow bob read subscription literal:weir-test.secure-orders-sub" in listed, listed

    alice = secured.publisher("alice")
    deadline = time.time() + 15
    while True:  # the gateway learns new ACLs from the metadata stream
        try:
            alice.publish(topic, b"m0").result(timeout=10)
            break
        except exceptions.PermissionDenied:
            assert time.time() < deadline, "alice's grant never arrived at the gateway"
            time.sleep(0.2)
    ids = [alice.publish(topic, f"m{i}".encode()).result(timeout=10) for i in range(1, 5)]
    assert len(set(ids)) == 4
    with pytest.raises(exceptions.PermissionDenied):
        alice.create_topic(name=f"projects/{PROJECT}/topics/alice-made")  # write is not create
    with pytest.raises(exceptions.PermissionDenied):
        secured.publisher("bob").publish(topic, b"x").result(timeout=10)

    # the subscription: only an admin creates it, bob reads it, alice may not
    secured.subscriber("admin").create_subscription(request={"name": sub, "topic": topic})
    # a subscription starts at the end: publish after it exists
    for i in range(5):
        alice.publish(topic, f"after-{i}".encode()).result(timeout=10)
    with pytest.raises(exceptions.PermissionDenied):
        secured.subscriber("alice").pull(subscription=sub, max_messages=10, timeout=10)
    bob = secured.subscriber("bob")
    got = []
    deadline = time.time() + 20
    while len(got) < 5 and time.time() < deadline:
        response = bob.pull(subscription=sub, max_messages=10, timeout=10)
        got += [m.message.data for m in response.received_messages]
        if response.received_messages:
            bob.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in response.received_messages])
    assert sorted(got) == [f"after-{i}".encode() for i in range(5)]
    with pytest.raises(exceptions.PermissionDenied):
        bob.delete_subscription(subscription=sub, timeout=10)  # read is not delete

    # removing the grant takes it away
    out = secured.weir("acl", "remove", "--principal", "alice")
    assert "1 removed" in out, out
    deadline = time.time() + 15
    while True:
        try:
            alice.publish(topic, b"late").result(timeout=10)
        except exceptions.PermissionDenied:
            break
        assert time.time() < deadline, "the removed grant still lets alice publish"
        time.sleep(0.2)


def test_plain_text_and_unknown_tokens_fail_cleanly(secured):
    topic = f"projects/{PROJECT}/topics/secure-plain"
    started = time.time()
    plain = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(
        channel=grpc.insecure_channel(f"127.0.0.1:{secured.gateway}")))
    with pytest.raises(exceptions.GoogleAPICallError) as failed:
        plain.get_topic(topic=topic, timeout=5, retry=None)
    assert time.time() - started < 5, f"plain text took {time.time() - started:.1f}s to fail"
    print("plain text to the TLS gateway:", type(failed.value).__name__, failed.value.message)

    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=secured.ca_pem),
        grpc.access_token_call_credentials("not-a-known-token-0123456789"))
    unknown = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(
        channel=grpc.secure_channel(f"127.0.0.1:{secured.gateway}", credentials)))
    with pytest.raises(exceptions.Unauthenticated):
        unknown.get_topic(topic=topic, timeout=10)

    # the CLI without a token, and HTTP endpoints in plain text, are refused too
    refused = subprocess.run(
        [WEIR, "topic", "list", "--bootstrap", f"127.0.0.1:{secured.controller}", "--tls-ca", secured.ca],
        capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "credentials required" in refused.stderr, refused.stderr
    assert secured.https_ok(secured.gateway_http, "/healthz")
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://127.0.0.1:{secured.http}/readyz", timeout=2)
