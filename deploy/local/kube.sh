#!/usr/bin/env bash
# kube.sh: a real Kubernetes control plane on loopback, for the chart's tests.
#
#   kube.sh build          build kube-apiserver, kube-controller-manager and kubectl
#                          $KUBE_VERSION from the Go modules in tools/kube into
#                          <repo>/.bin/kube; nothing when that build is there
#   kube.sh start <dir>    start etcd, kube-apiserver and kube-controller-manager on
#                          free ports, data and logs in <dir>; writes <dir>/kubeconfig
#                          (cluster-admin through a token) and <dir>/port
#   kube.sh stop <dir>     stop all three (idempotent)
#
# There are no nodes (a kubelet cannot run on these hosts: cgroup v1), so Pods stay
# Pending; everything up to them is real: admission, server-side validation, the
# controllers that make ReplicaSets and Pods of Deployments, StatefulSets and Jobs,
# garbage collection on uninstall. Needs etcd (Debian etcd-server) and openssl:
# deploy/local/install.sh kube installs them and runs the build.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Keep it equal to k8s.io/kubernetes in tools/kube/go.mod.
KUBE_VERSION=v1.37.2
KUBE_BIN=$QYAI_REPO_ROOT/.bin/kube
KUBE_CMDS=(kube-apiserver kube-controller-manager kubectl)

# ldflags: without the version variables the binaries report v0.0.0-master and
# kubectl cannot parse the server's version.
ldflags() {
	local minor=${KUBE_VERSION#v1.} v out="-s -w"
	minor=${minor%%.*}
	for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		out+=" -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
	done
	printf '%s' "$out"
}

# build_stamp: what the binaries in .bin/kube were built from. A change of the
# module's dependencies, of the Go version or of the flags rebuilds them.
build_stamp() {
	printf '%s %s %s\n' "$KUBE_VERSION" "$(go env GOVERSION)" \
		"$({ cat "$QYAI_REPO_ROOT/tools/kube/go.sum"; ldflags; } | sha256sum | cut -c1-16)"
}

kube_build() {
	need go "install Go first: https://go.dev/dl/"
	local stamp cmd ok=1
	stamp=$(build_stamp)
	for cmd in "${KUBE_CMDS[@]}"; do [[ -x $KUBE_BIN/$cmd ]] || ok=0; done
	if ((ok)) && [[ $(cat "$KUBE_BIN/stamp" 2>/dev/null) == "$stamp" ]]; then
		log "kube: $KUBE_VERSION present in $KUBE_BIN"
		return
	fi
	log "kube: building ${KUBE_CMDS[*]} $KUBE_VERSION into $KUBE_BIN (a first build takes 5-15 minutes; the Go build cache makes the next ones a relink)"
	mkdir -p "$KUBE_BIN"
	rm -f "$KUBE_BIN/stamp"
	local pkgs=()
	for cmd in "${KUBE_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
	(cd "$QYAI_REPO_ROOT/tools/kube" && GOWORK=off CGO_ENABLED=0 go build -trimpath \
		-ldflags "$(ldflags)" -o "$KUBE_BIN/" "${pkgs[@]}")
	echo "$stamp" >"$KUBE_BIN/stamp"
}

kube_check() {
	need etcd "deploy/local/install.sh kube"
	need openssl "deploy/local/install.sh kube"
	local cmd
	for cmd in "${KUBE_CMDS[@]}"; do
		[[ -x $KUBE_BIN/$cmd ]] || die "$KUBE_BIN/$cmd missing: run deploy/local/kube.sh build"
	done
}

# pki <dir>: a CA, the apiserver's serving certificate for 127.0.0.1 signed by it,
# the service-account signing key pair and a cluster-admin token.
pki() {
	local dir=$1
	mkdir -p "$dir/pki"
	(
		cd "$dir/pki"
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=qyai-test-ca \
			-keyout ca.key -out ca.crt
		openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
			-keyout apiserver.key -out apiserver.csr
		printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >san.ext
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
			-days 2 -extfile san.ext -out apiserver.crt
		openssl genrsa -out sa.key 2048
		openssl rsa -in sa.key -pubout -out sa.pub
	) >"$dir/pki/openssl.log" 2>&1 || {
		log_tail "$dir/pki/openssl.log"
		die "kube: could not make the certificates"
	}
	openssl rand -hex 24 >"$dir/pki/token"
	printf '%s,admin,1000,system:masters\n' "$(cat "$dir/pki/token")" >"$dir/pki/tokens.csv"
	chmod 600 "$dir/pki/"*.key "$dir/pki/token" "$dir/pki/tokens.csv"
}

# kubeconfig <dir> <port>: a kubeconfig for the apiserver, authenticated by the token.
kubeconfig() {
	local dir=$1 port=$2
	cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: qyai-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    token: $(cat "$dir/pki/token")
contexts:
- name: qyai-test
  context: {cluster: qyai-test, user: admin, namespace: default}
current-context: qyai-test
EOF
	chmod 600 "$dir/kubeconfig"
}

kctl() { "$KUBE_BIN/kubectl" --kubeconfig "$1/kubeconfig" --request-timeout 2s "${@:2}"; }

# ready <dir>: the apiserver is healthy and the controller manager has created the
# default ServiceAccount (without it the apiserver refuses Pods).
ready() {
	kctl "$1" get --raw /readyz >/dev/null 2>&1 &&
		kctl "$1" get serviceaccount default -n default >/dev/null 2>&1
}

kube_start() {
	local dir=$1
	kube_check
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if alive "$dir/apiserver.pid"; then
		log "kube already running in $dir on port $(cat "$dir/port" 2>/dev/null)"
		return 0
	fi
	local t0=$EPOCHREALTIME etcd_port peer_port port
	etcd_port=$(free_port)
	peer_port=$(free_port)
	port=$(free_port)
	while [[ $peer_port == "$etcd_port" ]]; do peer_port=$(free_port); done
	while [[ $port == "$etcd_port" || $port == "$peer_port" ]]; do port=$(free_port); done
	[[ -s $dir/pki/token ]] || pki "$dir"

	spawn "$dir/etcd.log" "$dir/etcd.pid" etcd --name qyai-test --data-dir "$dir/etcd" \
		--listen-client-urls "http://127.0.0.1:$etcd_port" \
		--advertise-client-urls "http://127.0.0.1:$etcd_port" \
		--listen-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
		--initial-cluster "qyai-test=http://127.0.0.1:$peer_port"
	if ! wait_ready "$dir/etcd.pid" 30 http_ok "http://127.0.0.1:$etcd_port/health"; then
		log_tail "$dir/etcd.log"
		kube_stop "$dir"
		die "etcd did not become healthy (see $dir/etcd.log)"
	fi

	# --endpoint-reconciler-type=none: there is no node to route the kubernetes
	# Service to. The service-account flags are the ones an apiserver refuses to
	# start without; the controller manager signs tokens with the same key.
	spawn "$dir/apiserver.log" "$dir/apiserver.pid" "$KUBE_BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$etcd_port" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
		--cert-dir "$dir/pki" \
		--tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
		--client-ca-file "$dir/pki/ca.crt" \
		--token-auth-file "$dir/pki/tokens.csv" --authorization-mode RBAC \
		--service-account-issuer https://kubernetes.default.svc \
		--service-account-key-file "$dir/pki/sa.pub" \
		--service-account-signing-key-file "$dir/pki/sa.key" \
		--service-cluster-ip-range 10.96.0.0/16 \
		--endpoint-reconciler-type none
	kubeconfig "$dir" "$port"
	if ! wait_ready "$dir/apiserver.pid" 60 kctl "$dir" get --raw /readyz; then
		log_tail "$dir/apiserver.log"
		kube_stop "$dir"
		die "kube-apiserver not ready (see $dir/apiserver.log)"
	fi

	# --secure-port 0: no serving endpoint of its own (readiness is the
	# ServiceAccount it creates); no leader election with a single instance.
	spawn "$dir/controller-manager.log" "$dir/controller-manager.pid" \
		"$KUBE_BIN/kube-controller-manager" \
		--kubeconfig "$dir/kubeconfig" --secure-port 0 --leader-elect=false \
		--service-account-private-key-file "$dir/pki/sa.key" \
		--root-ca-file "$dir/pki/ca.crt" --use-service-account-credentials=false
	if ! wait_ready "$dir/controller-manager.pid" 60 ready "$dir"; then
		log_tail "$dir/controller-manager.log"
		kube_stop "$dir"
		die "kube-controller-manager did not create the default ServiceAccount (see $dir/controller-manager.log)"
	fi
	echo "$port" >"$dir/port"
	log "kube ready on https://127.0.0.1:$port (etcd 127.0.0.1:$etcd_port, kubeconfig $dir/kubeconfig, $(elapsed "$t0"))"
}

kube_stop() {
	local dir=$1
	stop_pidfile "$dir/controller-manager.pid" kube-controller-manager 10
	stop_pidfile "$dir/apiserver.pid" kube-apiserver 20
	stop_pidfile "$dir/etcd.pid" etcd 10
}

case ${1:-} in
build) kube_build ;;
start)
	[[ -n ${2:-} ]] || die "usage: $(basename "$0") start <dir>"
	kube_start "$2"
	;;
stop)
	[[ -n ${2:-} ]] || die "usage: $(basename "$0") stop <dir>"
	kube_stop "$2"
	;;
*)
	log "usage: $(basename "$0") build | start <dir> | stop <dir>"
	exit 2
	;;
esac
