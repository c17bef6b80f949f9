#!/usr/bin/env bash
# Fails when any module's go.mod/go.sum would change under `go mod tidy`: every
# module listed in go.work, and the tools modules tools/lint, tools/images,
# tools/helmtest and tools/kube (outside go.work), each checked on its own
# (GOWORK=off), as a consumer building one module would.
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
mapfile -t modules < <(go work edit -json | sed -n 's/.*"DiskPath": "\.\/\(.*\)".*/\1/p')
((${#modules[@]} > 0)) || { echo "tidy-check: no modules found in go.work" >&2; exit 1; }
modules+=(tools/lint tools/images tools/helmtest tools/kube)
for m in "${modules[@]}"; do
	(cd "$m" && GOWORK=off GOFLAGS=-mod=mod go mod tidy -diff >/dev/null) || {
		echo "$m: go.mod/go.sum not tidy (run: cd $m && GOWORK=off go mod tidy)"
		status=1
	}
done
exit $status
