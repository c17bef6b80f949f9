#!/usr/bin/env bash
# install.sh: install what the local servers need, and nothing when all is there.
#
#   deploy/local/install.sh        the servers (what tests, make run and make bench need)
#   deploy/local/install.sh lint   shellcheck only (what deploy/local/shellcheck.sh needs)
#   deploy/local/install.sh images podman and runc (what the image smoke test in
#                                  tools/images needs; make images itself needs only Go)
#   deploy/local/install.sh helm   the helm CLI (what make test-chart lints the chart with)
#   deploy/local/install.sh kube   etcd, openssl and a self-built Kubernetes control plane
#                                  (what the chart's tests against a real apiserver need)
#
# The servers:
# - Debian packages redis-server, clickhouse-server, clickhouse-client (only
#   recommended by clickhouse-server) and curl, via apt-get; sudo when not root.
#   The distro's services are not started: a temporary policy-rc.d denies it.
# - nats-server $NATS_VERSION built with `go install` into <repo>/.bin (the Go build
#   cache makes rebuilds fast; Debian's nats-server 2.9 is too old).
# lint: the Debian package shellcheck, the same way.
# images: Debian's podman 4.3 with runc as its runtime (crun fails on these hosts'
# hybrid cgroups), the same way. Rootful podman needs nothing more: no uidmap, no
# fuse-overlayfs (the test's private storage uses the vfs driver).
# kube: Debian's etcd-server and openssl, then the Kubernetes control plane built by
# kube.sh build (kube-apiserver, kube-controller-manager, kubectl into <repo>/.bin/kube;
# what the chart's tests against a real apiserver need).
# helm: the helm CLI $HELM_VERSION built with `go install` into <repo>/.bin (what
# `make test-chart` runs `helm lint --strict` with); nothing when that version is there.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_VERSION=v2.15.2
# v3.21.4, not v3.22.0: the package policy of these machines lists v3.22.0 as served
# but not approved. Keep it equal to helm.sh/helm/v3 in tools/helmtest/go.mod.
HELM_VERSION=v3.21.4
BIN_DIR=$QYAI_REPO_ROOT/.bin

# as_root runs a command as root: directly, or through sudo when available.
as_root() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $* (no sudo found)"
	fi
}

# apt_install installs the missing packages without starting their services.
# policy-rc.d answering 101 ("action forbidden") is the Debian way to tell
# invoke-rc.d and deb-systemd-invoke not to start anything during an install.
apt_install() {
	local policy=/usr/sbin/policy-rc.d created=0
	if [[ ! -e $policy ]]; then
		as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
		created=1
		trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	local rc=0
	{
		log "+ apt-get update"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			log "+ apt-get install -y --no-install-recommends $*" &&
			as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
	} || rc=$?
	if ((created)); then
		as_root rm -f "$policy"
		trap - EXIT
	fi
	return "$rc"
}

# install_packages <what> <command:package>...: install the packages whose command is
# missing; <what> names them all in the message when none is.
install_packages() {
	local what=$1 missing=() pair cmd pkg
	shift
	for pair in "$@"; do
		cmd=${pair%%:*}
		pkg=${pair#*:}
		command -v "$cmd" >/dev/null || missing+=("$pkg")
	done
	if ((${#missing[@]} == 0)); then
		log "packages: $what present"
		return
	fi
	command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
	log "packages: installing ${missing[*]}"
	apt_install "${missing[@]}"
}

install_nats() {
	local bin=$BIN_DIR/nats-server have=""
	if [[ -x $bin ]]; then
		have=$("$bin" --version 2>/dev/null || true)
	fi
	if [[ $have == *"$NATS_VERSION" ]]; then
		log "nats-server: $NATS_VERSION present in $BIN_DIR"
		return
	fi
	need go "install Go first: https://go.dev/dl/"
	log "nats-server: building $NATS_VERSION into $BIN_DIR${have:+ (found ${have##* })}"
	log "+ GOBIN=$BIN_DIR go install github.com/nats-io/nats-server/v2@$NATS_VERSION"
	mkdir -p "$BIN_DIR"
	# From a neutral directory, so that no go.work or go.mod of the repo applies.
	(cd / && GOWORK=off GOBIN=$BIN_DIR go install "github.com/nats-io/nats-server/v2@$NATS_VERSION")
}

install_helm() {
	local bin=$BIN_DIR/helm have=""
	if [[ -x $bin ]]; then
		have=$("$bin" version --template '{{.Version}}' 2>/dev/null || true)
	fi
	if [[ $have == "$HELM_VERSION" ]]; then
		log "helm: $HELM_VERSION present in $BIN_DIR"
		return
	fi
	need go "install Go first: https://go.dev/dl/"
	log "helm: building $HELM_VERSION into $BIN_DIR${have:+ (found $have)}"
	mkdir -p "$BIN_DIR"
	# The version ldflag makes `helm version` report it (go install sets no tag).
	(cd / && GOWORK=off GOBIN=$BIN_DIR go install \
		-ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
}

# install_zookeeper installs Debian's zookeeper (and a Java runtime when there is none):
# the ClickHouse cluster of TOPOLOGY=cluster and its tests coordinate through it. The
# package puts no command on PATH, so its jar is what tells it is there.
install_zookeeper() {
	local pkgs=()
	[[ -e $ZOOKEEPER_JAR ]] || pkgs+=(zookeeper)
	command -v java >/dev/null || pkgs+=(default-jre-headless)
	if ((${#pkgs[@]} == 0)); then
		log "packages: zookeeper and java present"
		return
	fi
	command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get: install them by hand"
	log "packages: installing ${pkgs[*]}"
	apt_install "${pkgs[@]}"
}

case ${1:-} in
"")
	# clickhouse-server lives in /usr/sbin (lib.sh adds it to PATH).
	install_packages "redis-server, clickhouse-server, clickhouse-client, curl" \
		redis-server:redis-server redis-cli:redis-tools \
		clickhouse-server:clickhouse-server clickhouse-client:clickhouse-client curl:curl
	install_zookeeper
	install_nats
	;;
lint) install_packages shellcheck shellcheck:shellcheck ;;
images) install_packages "podman, runc" podman:podman runc:runc ;;
helm) install_helm ;;
kube)
	install_packages "etcd-server, openssl" etcd:etcd-server openssl:openssl
	"$QYAI_LOCAL_DIR/kube.sh" build
	;;
*)
	log "usage: $(basename "$0") [lint|images|helm|kube]"
	exit 2
	;;
esac
