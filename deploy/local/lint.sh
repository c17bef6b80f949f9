#!/usr/bin/env bash
# Lint gate: one golangci-lint run over every module of go.work, with the
# repo-root .golangci.yml, one over tools/helmtest, then shellcheck over every script
# (deploy/local/shellcheck.sh).
#
# golangci-lint is built from source out of the tools module tools/lint (its
# own go.mod, pinned by a `tool` directive, not part of go.work) into .bin/.
# It is rebuilt only when tools/lint/go.mod or go.sum changes, or the Go
# toolchain does (a linter built by an older Go cannot load newer code): a
# stamp file beside the binary records what it was built from.
#
# Extra arguments go to `golangci-lint run`, e.g. deploy/local/lint.sh --fix.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
GO=${GO:-go}

bin=.bin/golangci-lint
stamp=.bin/golangci-lint.stamp
want=$(cat tools/lint/go.mod tools/lint/go.sum | sha256sum | cut -d' ' -f1)
want="$want $("$GO" env GOVERSION)"
if [[ ! -x $bin || ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
	echo "lint: building golangci-lint from tools/lint (first build takes a few minutes)"
	mkdir -p .bin
	rm -f "$stamp"
	(cd tools/lint && GOWORK=off "$GO" build -o "$root/$bin" github.com/golangci/golangci-lint/v2/cmd/golangci-lint)
	echo "$want" >"$stamp"
fi

# The module directories listed by go.work's `use` directives, as ./dir/...
mapfile -t pkgs < <("$GO" work edit -json | sed -n 's/^[[:space:]]*"DiskPath": "\(.*\)",\{0,1\}$/\1/p' | sed 's|^\./||; s|^|./|; s|$|/...|')
if ((${#pkgs[@]} == 0)); then
	echo "lint: no modules found in go.work" >&2
	exit 1
fi

"$bin" run --config .golangci.yml "$@" "${pkgs[@]}"
# tools/helmtest (the chart's tests, podrun among them) is a module outside
# go.work: linted on its own, GOWORK=off, with the same configuration (its
# paths are relative to the config file, so the rules apply unchanged).
(cd tools/helmtest && GOWORK=off "$root/$bin" run --config "$root/.golangci.yml" "$@" ./...)

bash deploy/local/shellcheck.sh
