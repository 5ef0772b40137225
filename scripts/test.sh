#!/usr/bin/env bash
# The whole test suite: formatting, vet, and every test with the race detector.
# Some tests mount a tmpfs to fill a real disk, so run this as root (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "gofmt would change these files:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
go test -race -count=1 -timeout 15m ./...
