#!/usr/bin/env bash
# deploy/local/shellcheck.sh: lint every shell script in the repository with shellcheck.
#
#   deploy/local/shellcheck.sh
#
# The scripts are the files git knows of (tracked, or untracked and not ignored, so
# that a new script is checked before its first commit) that are named *.sh or whose
# first line is a sh or bash shebang (.ci/run). shellcheck runs with its default
# checks and -x, so that it follows each script's `source` of lib.sh (the scripts say
# where with a source-path directive). Any finding fails the run; fix it rather than
# silence it, and give every `# shellcheck disable=` a comment saying why. When it is
# missing, install.sh lint installs shellcheck first.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# shell_shebang <file> succeeds when the file's first line is #! with sh or bash as
# the interpreter, directly (#!/bin/bash) or through env (#!/usr/bin/env bash).
shell_shebang() {
	local line words word interp
	{ IFS= read -r -n 256 line <"$1" || [[ -n $line ]]; } 2>/dev/null || return 1
	[[ $line == '#!'* ]] || return 1
	read -r -a words <<<"${line#'#!'}"
	((${#words[@]} > 0)) || return 1
	interp=${words[0]}
	if [[ ${interp##*/} == env ]]; then
		interp=""
		for word in "${words[@]:1}"; do
			# Skip env's options (-S) and variable assignments.
			[[ $word == -* || $word == *=* ]] && continue
			interp=$word
			break
		done
	fi
	[[ ${interp##*/} == sh || ${interp##*/} == bash ]]
}

main() {
	cd "$QYAI_REPO_ROOT"
	git rev-parse --git-dir >/dev/null 2>&1 || die "$QYAI_REPO_ROOT is not a git checkout: cannot list the scripts"
	command -v shellcheck >/dev/null || "$QYAI_LOCAL_DIR/install.sh" lint
	local files=() f
	while IFS= read -r -d '' f; do
		# Tracked files deleted in the working tree are listed too; skip them.
		[[ -f $f ]] || continue
		if [[ $f == *.sh ]] || shell_shebang "$f"; then files+=("$f"); fi
	done < <(git ls-files -z --cached --others --exclude-standard)
	((${#files[@]} > 0)) || die "no shell scripts found"
	log "shellcheck $(shellcheck --version | sed -n 's/^version: //p') over ${#files[@]} scripts: ${files[*]}"
	shellcheck -x "${files[@]}" || die "shellcheck: fix the findings above"
	log "shellcheck: no findings"
}

main "$@"
