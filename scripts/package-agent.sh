#!/bin/sh
# package-agent.sh VERSION ARCH BINARY ORT_LIB OUT_DIR — build the agent
# tarball dist/edgefleet-agent-VERSION-linux-ARCH.tar.gz from a built binary
# and its onnxruntime library (used by `make cross` and by deploy tests).
# Layout: edgefleet-agent-VERSION-linux-ARCH/{PACKAGE, install.sh,
# bin/edgefleet-agent, lib/libonnxruntime.so.1, etc/agent.yaml.example,
# systemd/edgefleet-agent.service}.
set -eu
[ $# -eq 5 ] || { echo "usage: package-agent.sh VERSION ARCH BINARY ORT_LIB OUT_DIR" >&2; exit 2; }
version=$1 arch=$2 bin=$3 lib=$4 out=$5
case $arch in amd64 | arm64) ;; *) echo "package-agent.sh: unsupported arch $arch (amd64, arm64)" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
name=edgefleet-agent-$version-linux-$arch
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
d=$stage/$name
mkdir -p "$d/bin" "$d/lib" "$d/etc" "$d/systemd" "$out"
install -m 0755 "$bin" "$d/bin/edgefleet-agent"
install -m 0644 "$lib" "$d/lib/libonnxruntime.so.1"
install -m 0644 "$here/deploy/agent/agent.yaml.example" "$d/etc/agent.yaml.example"
install -m 0644 "$here/deploy/systemd/edgefleet-agent.service" "$d/systemd/edgefleet-agent.service"
install -m 0755 "$here/deploy/agent/install.sh" "$d/install.sh"
printf 'name=edgefleet-agent\nversion=%s\narch=%s\n' "$version" "$arch" >"$d/PACKAGE"
chmod 0644 "$d/PACKAGE"
# Byte-reproducible: the same inputs give the same archive.
sh "$here/scripts/reproducible-tar.sh" "$out/$name.tar.gz" "$stage" "$name"
echo "$out/$name.tar.gz"
