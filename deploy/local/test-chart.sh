#!/usr/bin/env bash
# test-chart.sh: what `make test-chart` runs.
# 1. helm lint --strict of helm/qyai with its defaults and with each example values
#    file, with the helm that `install.sh helm` builds into .bin (built when missing);
# 2. the chart's Go tests in tools/helmtest (a module of its own, GOWORK=off): renders
#    against golden files, strict decoding into the Kubernetes types, policy checks,
#    the services' --validate with the rendered env, and the generated README;
#    tools/helmtest/kubeapi against a real control plane (etcd, kube-apiserver and
#    kube-controller-manager, which `install.sh kube` builds from tools/kube into
#    .bin/kube: 5-15 minutes the first time, a check of a stamp after);
#    and tools/helmtest/podrun, which runs the images under rootful podman with the
#    rendered pod specs against real Redis, NATS and ClickHouse (root needed; the
#    servers, podman and runc come from install.sh and install.sh images).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$QYAI_REPO_ROOT"
deploy/local/install.sh helm
deploy/local/install.sh kube
deploy/local/install.sh
deploy/local/install.sh images
helm=$QYAI_REPO_ROOT/.bin/helm
chart=helm/qyai
"$helm" lint --strict "$chart"
for f in "$chart"/examples/*.yaml; do
	"$helm" lint --strict "$chart" -f "$f"
done
cd tools/helmtest
GOWORK=off go vet ./...
GOWORK=off go test -count=1 -timeout 10m ./...
