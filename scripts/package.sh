#!/usr/bin/env bash
# Builds the gwenrelay .deb and .rpm into dist/ (or $DIST):
#   dist/gwenrelay_<version>_amd64.deb
#   dist/gwenrelay-<version>.x86_64.rpm
# from a static binary whose `gwenrelay version` prints <version>, and prints
# their paths, one a line, last. Runs into one $DIST take turns (flock), so
# that tests running side by side do not build over each other; a test is
# better off with a DIST of its own.
#
# The version comes from `git describe --tags` (tags vX.Y.Z):
#   on tag v1.2.3, clean             1.2.3          (v1.2.3-rc1 gives 1.2.3~rc1)
#   after v1.2.3, or a dirty tree    1.2.3+git<commit time>.<sha>[.dirty]
#   no tag yet                       0.0.0~git<commit time>.<sha>[.dirty]
# so that each later commit sorts higher for dpkg and rpm. VERSION=... overrides
# it (and is required outside a git checkout). MAINTAINER="Name <email>" sets
# the packager. SOURCE_DATE_EPOCH defaults to the commit time, so that two
# builds of one commit give the same files.
set -euo pipefail
cd "$(dirname "$0")/.."

NFPM="github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0"

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
commit_epoch=$(git log -1 --format=%ct HEAD 2>/dev/null || date +%s)
commit_time=$(TZ=UTC date -d "@$commit_epoch" +%Y%m%d%H%M%S)
release=false

if [ -z "${VERSION:-}" ]; then
	if [ "$commit" = unknown ]; then
		echo "package.sh: not a git checkout: set VERSION" >&2
		exit 2
	fi
	desc=$(git describe --tags --always --dirty --match 'v[0-9]*')
	if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
		base=${tag#v}
		base=${base//-/\~} # v1.2.3-rc1: 1.2.3~rc1 sorts before 1.2.3
		if [ "$desc" = "$tag" ]; then
			VERSION=$base
			release=true
		else
			VERSION="$base+git$commit_time.$commit"
		fi
	else
		VERSION="0.0.0~git$commit_time.$commit"
	fi
	case "$desc" in *-dirty) VERSION="$VERSION.dirty" ;; esac
fi
# Valid for both: dpkg wants a leading digit, rpm forbids '-' in a version.
if ! [[ "$VERSION" =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "package.sh: version $VERSION: want a digit, then letters, digits, . + ~" >&2
	exit 2
fi
export VERSION
export MAINTAINER="${MAINTAINER:-gwenrelay maintainers <maintainers@gwenrelay.example.org>}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$commit_epoch}"

dist=${DIST:-dist}
mkdir -p "$dist"
exec 9>"$dist/.package.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
fi
# packaging/nfpm.yaml takes the built files from here.
export BUILD_DIR="$dist/build"
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
echo "package.sh: building gwenrelay $VERSION"
CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath \
	-ldflags="-s -w -X main.version=$VERSION" -o "$BUILD_DIR/gwenrelay" .

go run ./packaging/internal/pkgdocs \
	-binary "$BUILD_DIR/gwenrelay" -version "$VERSION" -release="$release" \
	-commit "$commit" -date "$(TZ=UTC date -d "@$commit_epoch" +%Y-%m-%dT%H:%M:%SZ)" \
	-maintainer "$MAINTAINER" -out "$BUILD_DIR"

deb="$dist/gwenrelay_${VERSION}_amd64.deb"
rpm="$dist/gwenrelay-${VERSION}.x86_64.rpm"
rm -f "$deb" "$rpm"
go run "$NFPM" package --config packaging/nfpm.yaml --packager deb --target "$deb"
go run "$NFPM" package --config packaging/nfpm.yaml --packager rpm --target "$rpm"
echo "$deb"
echo "$rpm"
