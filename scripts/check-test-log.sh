#!/usr/bin/env bash
# Reads a `go test -v` log: fails when a test failed or was skipped (every ebpfnet test needs
# root, the kernel and namespaces, and here they always run), and prints the closing tally.
set -euo pipefail
log=$1
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
pkgfail=$(grep -cE '^(FAIL|panic:)' "$log" || true)
if ((skipped > 0)); then
	echo "skipped tests (not allowed here):"
	grep -E '^\s*--- SKIP' "$log"
fi
if ((pkgfail > 0 && failed == 0)); then
	# A test binary died without a failed test: show how it ended (a fatal error, a signal, an exit).
	echo "a test binary died; the log's last lines before each package failure:"
	grep -B 40 -E '^FAIL\s' "$log" | grep -vE '^\s*(=== (RUN|PAUSE|CONT)|--- PASS)' | tail -60
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
((failed == 0 && skipped == 0 && pkgfail == 0 && passed > 0))
