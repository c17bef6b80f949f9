#!/usr/bin/env bash
# Fails when any module's go.mod/go.sum would change under `go mod tidy`:
# the go.work modules and the tools module tools/lint (outside go.work).
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
for m in pkg gateway meter admin deploy tools/lint; do
  (cd "$m" && GOWORK=off GOFLAGS=-mod=mod go mod tidy -diff >/dev/null) || { echo "$m: go.mod/go.sum not tidy (run: cd $m && go mod tidy)"; status=1; }
done
exit $status
