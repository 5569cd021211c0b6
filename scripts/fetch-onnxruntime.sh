#!/bin/sh
# fetch-onnxruntime.sh puts libonnxruntime.so.1 (onnxruntime 1.24.3) for
# linux x64 and arm64 into third_party/onnxruntime/linux-{x64,arm64}/.
#
# The library comes out of the onnxruntime-node@1.24.3 npm tarball, taken with
# `npm pack` (which downloads the tarball only and runs no install scripts).
# The tarball and both extracted libraries are checked against pinned sha256
# sums; any mismatch is an error and nothing is installed. Run by `make deps`.
# Idempotent: when both libraries are present with the right sums it does
# nothing and needs no network.
set -eu

ORT_NPM_PACKAGE="onnxruntime-node@1.24.3"
TARBALL_SHA256="aa1bb5fa261ea68de05dd53efbba210cd7adf2d2850f4c3a201054c74cc78040"
X64_SHA256="92ba8e44d31b80a34f5e805076a044122c3be1fffe0d88ed790de7267b0b2682"
ARM64_SHA256="33032cb5b91c12edbf028d7c69fa40a31848d66c0095448758af237d5e0b07db"
LIB="libonnxruntime.so.1"

script_dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
repo_root=$(CDPATH='' cd -- "$script_dir/.." && pwd)
dest="$repo_root/third_party/onnxruntime"

die() {
	echo "fetch-onnxruntime: $*" >&2
	exit 1
}

sha256_of() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	else
		die "neither sha256sum nor shasum found; install coreutils"
	fi
}

# has_lib FILE SUM succeeds when FILE exists and its sha256 is SUM.
has_lib() {
	[ -f "$1" ] && [ "$(sha256_of "$1")" = "$2" ]
}

# check FILE SUM fails loudly when FILE's sha256 is not SUM.
check() {
	got=$(sha256_of "$1")
	if [ "$got" != "$2" ]; then
		die "sha256 mismatch for $1: got $got, want $2 (refusing to install it)"
	fi
}

if has_lib "$dest/linux-x64/$LIB" "$X64_SHA256" &&
	has_lib "$dest/linux-arm64/$LIB" "$ARM64_SHA256"; then
	echo "fetch-onnxruntime: $dest already holds verified libraries for linux-x64 and linux-arm64"
	exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm not found; install it (Debian: apt-get install npm)"
command -v tar >/dev/null 2>&1 || die "tar not found"

work=$(mktemp -d "${TMPDIR:-/tmp}/edgefleet-ort.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM

echo "fetch-onnxruntime: npm pack $ORT_NPM_PACKAGE"
(cd "$work" && npm pack --silent --ignore-scripts "$ORT_NPM_PACKAGE" >/dev/null) ||
	die "npm pack $ORT_NPM_PACKAGE failed"
tarball="$work/onnxruntime-node-1.24.3.tgz"
[ -f "$tarball" ] || die "npm pack did not produce $tarball"
check "$tarball" "$TARBALL_SHA256"

x64_member="package/bin/napi-v6/linux/x64/$LIB"
arm64_member="package/bin/napi-v6/linux/arm64/$LIB"
tar -xzf "$tarball" -C "$work" "$x64_member" "$arm64_member" ||
	die "could not extract $x64_member and $arm64_member from $tarball"
check "$work/$x64_member" "$X64_SHA256"
check "$work/$arm64_member" "$ARM64_SHA256"

# Install each file atomically: copy next to the target, then rename.
install_lib() {
	mkdir -p "$2"
	cp "$1" "$2/$LIB.tmp.$$"
	chmod 0644 "$2/$LIB.tmp.$$"
	mv -f "$2/$LIB.tmp.$$" "$2/$LIB"
}
install_lib "$work/$x64_member" "$dest/linux-x64"
install_lib "$work/$arm64_member" "$dest/linux-arm64"
check "$dest/linux-x64/$LIB" "$X64_SHA256"
check "$dest/linux-arm64/$LIB" "$ARM64_SHA256"
echo "fetch-onnxruntime: installed verified $LIB into $dest/linux-x64 and $dest/linux-arm64"
