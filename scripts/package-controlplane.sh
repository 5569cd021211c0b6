#!/bin/sh
# package-controlplane.sh VERSION ARCH BINARY ORT_LIB OUT_DIR — build the
# control plane tarball OUT_DIR/edgefleet-VERSION-linux-ARCH.tar.gz from a
# built binary and its onnxruntime library (used by `make dist` and by
# deploy tests). Layout: edgefleet-VERSION-linux-ARCH/{bin/edgefleet,
# lib/libonnxruntime.so.1, systemd/edgefleet.service,
# systemd/edgefleet-broker-sync.service, mosquitto/*} — what
# docs/deploy.md's server section installs.
set -eu
[ $# -eq 5 ] || { echo "usage: package-controlplane.sh VERSION ARCH BINARY ORT_LIB OUT_DIR" >&2; exit 2; }
version=$1 arch=$2 bin=$3 lib=$4 out=$5
case $arch in amd64 | arm64) ;; *) echo "package-controlplane.sh: unsupported arch $arch (amd64, arm64)" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
name=edgefleet-$version-linux-$arch
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
d=$stage/$name
mkdir -p "$d/bin" "$d/lib" "$d/systemd" "$d/mosquitto" "$out"
install -m 0755 "$bin" "$d/bin/edgefleet"
install -m 0644 "$lib" "$d/lib/libonnxruntime.so.1"
for unit in edgefleet.service edgefleet-broker-sync.service; do
	install -m 0644 "$here/deploy/systemd/$unit" "$d/systemd/$unit"
done
for f in "$here"/deploy/mosquitto/*; do
	install -m 0644 "$f" "$d/mosquitto/$(basename "$f")"
done
# Byte-reproducible: the same inputs give the same archive.
sh "$here/scripts/reproducible-tar.sh" "$out/$name.tar.gz" "$stage" "$name"
echo "$out/$name.tar.gz"
