#!/bin/sh
# Installs protoc (Debian's protobuf-compiler) for `make proto`.
set -eu
if command -v protoc >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
	echo "protoc is missing: run 'sudo apt-get install -y protobuf-compiler' and retry" >&2
	exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
protoc --version
