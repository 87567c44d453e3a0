"""What the chart must render, checked over `helm template` output (deploy/validate.sh
renders it): what kubernetes-validate's schemas cannot say."""

import os

import pytest
import yaml

RENDERS = os.environ.get("WEIR_RENDERS", "target/deploy-render")


def load(name):
    with open(os.path.join(RENDERS, f"{name}.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.fixture(params=["default", "secure"])
def docs(request):
    return load(request.param)


def node_container(docs):
    sts = one(docs, "StatefulSet")
    return sts, sts["spec"]["template"]["spec"]["containers"][0]


def test_the_quorum_forms_and_voters_are_the_ordinals(docs):
    sts, c = node_container(docs)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    script = c["args"][0]
    voters = script.split('--controllers "')[1].split('"')[0].split(",")
    host = "weir-{}.weir-headless.weir.svc.cluster.local"
    assert voters == [f"{i + 1}={host.format(i)}:9093/{host.format(i)}:9095" for i in range(3)]
    assert '--internal-listen "0.0.0.0:9095"' in script
    headless = one(docs, "Service", "weir-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == "weir-headless"


def test_a_stop_drains_first_and_probes_watch_health(docs):
    sts, c = node_container(docs)
    pre = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "weir node drain --id" in pre
    assert c["command"][:2] == ["/usr/bin/tini", "--"], "SIGTERM reaches weir"
    assert "exec weir node" in c["args"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_one_node_down_at_a_time_and_spread(docs):
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def test_memory_is_limited_data_is_persistent_and_rack_comes_from_the_node(docs):
    sts, c = node_container(docs)
    assert c["resources"]["limits"]["memory"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/var/lib/weir"} in c["volumeMounts"]
    env = {e["name"]: e for e in c["env"]}
    assert env["WEIR_RACK_FROM_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    role = one(docs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


def test_security_mounts_the_secrets_and_turns_everything_on():
    docs = load("secure")
    sts, c = node_container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["WEIR_TLS_CERT"] == "/etc/weir/tls/tls.crt"
    assert env["WEIR_AUTHORIZATION"] == "true"
    assert env["WEIR_AUTH_JWT_ISSUER"] == "https://idp.example"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "weir-tls"
    assert sts["spec"]["replicas"] == 5
    # the voters stay the first three; ordinals 4 and 5 join when added
    assert "--join" in c["args"][0]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https"
    gateway = one(docs, "Deployment", "weir-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in gateway["env"]} >= {"WEIR_TLS_CA", "WEIR_AUTH_TOKEN_FILE"}


def test_the_default_render_is_plain_and_has_no_monitor():
    docs = load("default")
    _, c = node_container(docs)
    assert not any(e["name"].startswith("WEIR_TLS") for e in c["env"])
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]


def test_only_the_nodes_reach_the_internal_ports(docs):
    policy = one(docs, "NetworkPolicy")
    sts, _ = node_container(docs)
    nodes = sts["spec"]["template"]["metadata"]["labels"]
    assert all(nodes[k] == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    internal, public = policy["spec"]["ingress"]
    assert sorted(p["port"] for p in internal["ports"]) == [9094, 9095]
    assert internal["from"] == [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}]
    assert "from" not in public, "clients come from anywhere"
    assert sorted(p["port"] for p in public["ports"]) == [9080, 9092, 9093]
