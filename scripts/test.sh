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

# The packaging and service tests build .deb/.rpm packages, install them with
# dpkg and boot a Debian tree under systemd-nspawn. As root (CI), install the
# tools they need and make a missing one a failure rather than a skip.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	need=(lintian rpm file shellcheck systemd systemd-container debootstrap procps ca-certificates)
	if ! dpkg-query -W "${need[@]}" >/dev/null 2>&1; then
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
	fi
	export GWENRELAY_PACKAGING_STRICT=1
fi

# The Segment-library tests (e2e_segmentapi_test.go) run @segment/analytics-node,
# which they install with npm ci from testdata/segmentapi: they need node and npm
# and fail without them. Install them where they are missing.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
	else
		echo "node and npm are needed by the Segment-library tests: install Node.js 20 or later" >&2
		exit 1
	fi
fi
echo "node $(node --version), npm $(npm --version)"

go test -race -count=1 -timeout 15m ./...
