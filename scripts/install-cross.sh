#!/bin/sh
# install-cross.sh — Debian packages for `make cross` / `make test-cross`:
# the arm64 cross compiler and libc (cgo for onnxruntime_go) and qemu user
# emulation to run the arm64 agent on an x86-64 host.
set -eu
pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
if [ "$(id -u)" != 0 ]; then
	echo "install-cross.sh: run as root, or: apt-get install $pkgs" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $pkgs >/dev/null
