#!/bin/sh
# install.sh — install, upgrade or remove the edgefleet agent on a device or
# into an image root. POSIX sh; ships inside every agent tarball built by
# `make cross` (docs/deploy.md walks through it).
#
#   sh install.sh --config agent.yaml                 # provisioning bundle
#   sh install.sh --enroll-token T --control-plane U  # one-time enrollment
#   sh install.sh                                     # upgrade: keeps config and state
#   sh install.sh --root /mnt/image --config agent.yaml   # "flash" an image root
#   sh install.sh --config agent.yaml --tls-ca-file fleet-ca.pem  # private CA
#   sh install.sh --uninstall [--purge]
#
# Exit status: 0 done, 2 usage error, 3 wrong architecture, 4 no systemd,
# 5 missing or bad provisioning, 1 anything else.
set -eu

PROG=install.sh
ROOT=/
TARBALL=
CONFIG=
TOKEN=
CONTROL_PLANE=
UNINSTALL=0
PURGE=0
NO_START=0
ENROLL_ARGS=
TLS_CA=
TLS_CERT=
TLS_KEY=

# Where things go (relative to ROOT).
PREFIX=/opt/edgefleet-agent
UNIT_DIR=/etc/systemd/system
UNIT=edgefleet-agent.service
CONF_DIR=/etc/edgefleet
CONF=$CONF_DIR/agent.yaml
DATA_DIR=/var/lib/edgefleet-agent
USER_NAME=edgefleet
# Certificates given with --tls-*-file are installed here and the config
# names these paths (the device's view, also under --root).
TLS_DIR=$CONF_DIR/tls
TLS_CA_DST=$TLS_DIR/ca.crt
TLS_CERT_DST=$TLS_DIR/client.crt
TLS_KEY_DST=$TLS_DIR/client.key

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
	code=$1
	shift
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit "$code"
}

usage() {
	cat <<'EOF'
usage: install.sh [--root DIR] [--tarball FILE] [--config FILE | --enroll-token T --control-plane URL]
                  [--tls-ca-file FILE] [--tls-cert-file FILE --tls-key-file FILE]
                  [--no-start] | --uninstall [--purge] [--root DIR]

  --root DIR            install into DIR instead of / (an image being built); systemctl is
                        not called, the unit is enabled by its multi-user.target.wants link
  --tarball FILE        the agent tarball (default: the files next to this script)
  --config FILE         provisioning bundle: the agent config written by
                        `edgefleet device add ID --config-out FILE`
  --enroll-token T      one-time enrollment token (`edgefleet device enroll`), with
  --control-plane URL   the control plane's API URL; `edgefleet-agent enroll` exchanges the
                        token for credentials (with --root: the agent must run on this machine)
  --tls-ca-file FILE    the broker's CA bundle (a private CA): installed as
                        /etc/edgefleet/tls/ca.crt (0644 root:edgefleet), the config's tls_ca_file
  --tls-cert-file FILE  this device's client certificate for mutual TLS, with
  --tls-key-file FILE   its key: installed as /etc/edgefleet/tls/client.crt (0644) and
                        client.key (0640 root:edgefleet), the config's tls_cert_file/tls_key_file
  --no-start            install and enable, but do not start (or restart) the service
  -- ARGS...            passed to `edgefleet-agent enroll` (e.g. --tls-ca-file FILE)
  --uninstall           remove the agent; config and data stay unless --purge
  --purge               with --uninstall: also remove config, data and the edgefleet user
EOF
}

while [ $# -gt 0 ]; do
	case $1 in
	--root) [ $# -ge 2 ] || die 2 "--root needs a directory"; ROOT=$2; shift 2 ;;
	--root=*) ROOT=${1#*=}; shift ;;
	--tarball) [ $# -ge 2 ] || die 2 "--tarball needs a file"; TARBALL=$2; shift 2 ;;
	--tarball=*) TARBALL=${1#*=}; shift ;;
	--config) [ $# -ge 2 ] || die 2 "--config needs a file"; CONFIG=$2; shift 2 ;;
	--config=*) CONFIG=${1#*=}; shift ;;
	--enroll-token) [ $# -ge 2 ] || die 2 "--enroll-token needs a token"; TOKEN=$2; shift 2 ;;
	--enroll-token=*) TOKEN=${1#*=}; shift ;;
	--control-plane) [ $# -ge 2 ] || die 2 "--control-plane needs a URL"; CONTROL_PLANE=$2; shift 2 ;;
	--control-plane=*) CONTROL_PLANE=${1#*=}; shift ;;
	--uninstall) UNINSTALL=1; shift ;;
	--purge) PURGE=1; shift ;;
	--no-start) NO_START=1; shift ;;
	--tls-ca-file) [ $# -ge 2 ] || die 2 "--tls-ca-file needs a file"; TLS_CA=$2; shift 2 ;;
	--tls-ca-file=*) TLS_CA=${1#*=}; shift ;;
	--tls-cert-file) [ $# -ge 2 ] || die 2 "--tls-cert-file needs a file"; TLS_CERT=$2; shift 2 ;;
	--tls-cert-file=*) TLS_CERT=${1#*=}; shift ;;
	--tls-key-file) [ $# -ge 2 ] || die 2 "--tls-key-file needs a file"; TLS_KEY=$2; shift 2 ;;
	--tls-key-file=*) TLS_KEY=${1#*=}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; ENROLL_ARGS=$*; break ;;
	*) usage >&2; die 2 "unknown argument: $1" ;;
	esac
done

[ -d "$ROOT" ] || die 2 "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then R=; else R=$ROOT; fi
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die 2 "--purge only goes with --uninstall"
if [ -n "$TOKEN" ] && [ -z "$CONTROL_PLANE" ]; then
	die 5 "--enroll-token needs --control-plane URL (where the agent exchanges the token)"
fi
if [ -n "$CONTROL_PLANE" ] && [ -z "$TOKEN" ]; then
	die 5 "--control-plane needs --enroll-token T (create one with: edgefleet device enroll ID)"
fi
if [ -n "$CONFIG" ] && [ -n "$TOKEN" ]; then
	die 2 "give either --config (provisioning bundle) or --enroll-token, not both"
fi
if { [ -n "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; } || { [ -z "$TLS_CERT" ] && [ -n "$TLS_KEY" ]; }; then
	die 2 "--tls-cert-file and --tls-key-file go together (a client certificate and its key)"
fi
if [ "$UNINSTALL" = 1 ] && [ -n "$TLS_CA$TLS_CERT" ]; then
	die 2 "--tls-*-file install certificates; they do not go with --uninstall"
fi

# systemd_live: is this the running system, under systemd?
systemd_live() { [ -z "$R" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# uid_of/gid_of NAME: numeric ids from ROOT's passwd/group ("" if absent).
uid_of() { [ -f "$R/etc/passwd" ] && awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/passwd" || true; }
gid_of() { [ -f "$R/etc/group" ] && awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/group" || true; }

# ---------------------------------------------------------------- uninstall
if [ "$UNINSTALL" = 1 ]; then
	if systemd_live; then
		systemctl disable --now "$UNIT" 2>/dev/null || true
	fi
	rm -f "$R$UNIT_DIR/multi-user.target.wants/$UNIT" "$R$UNIT_DIR/$UNIT" \
		"$R/usr/local/bin/edgefleet-agent" \
		"$R/usr/lib/sysusers.d/edgefleet-agent.conf" "$R/usr/lib/tmpfiles.d/edgefleet-agent.conf"
	rm -rf "$R$PREFIX"
	systemd_live && systemctl daemon-reload || true
	if [ "$PURGE" = 1 ]; then
		rm -rf "$R$CONF_DIR" "$R$DATA_DIR"
		if [ -n "$(uid_of "$USER_NAME")" ] && command -v userdel >/dev/null 2>&1; then
			if [ -z "$R" ]; then userdel "$USER_NAME" 2>/dev/null || warn "could not remove user $USER_NAME"; else
				userdel --root "$ROOT" "$USER_NAME" 2>/dev/null || warn "could not remove user $USER_NAME from $ROOT"; fi
		fi
		say "removed the agent, its config, its data and the $USER_NAME user from $ROOT"
	else
		say "removed the agent from $ROOT; kept $CONF and $DATA_DIR (--purge removes them)"
	fi
	exit 0
fi

# ---------------------------------------------------------------- package
WORK=
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
if [ -n "$TARBALL" ]; then
	[ -f "$TARBALL" ] || die 2 "--tarball $TARBALL: no such file"
	WORK=$(mktemp -d)
	tar -xzf "$TARBALL" -C "$WORK" || die 1 "--tarball $TARBALL: not a gzip'ed tar archive"
	PKG=$(find "$WORK" -mindepth 2 -maxdepth 2 -name PACKAGE -exec dirname {} \; | head -n 1)
	[ -n "$PKG" ] || die 1 "--tarball $TARBALL: not an edgefleet agent package (no PACKAGE file)"
else
	PKG=$(cd "$(dirname "$0")" && pwd)
fi
for f in PACKAGE bin/edgefleet-agent lib/libonnxruntime.so.1 systemd/$UNIT etc/agent.yaml.example; do
	[ -f "$PKG/$f" ] || die 1 "package at $PKG lacks $f: run install.sh from an unpacked agent tarball or pass --tarball"
done
PKG_VERSION=$(sed -n 's/^version=//p' "$PKG/PACKAGE")
PKG_ARCH=$(sed -n 's/^arch=//p' "$PKG/PACKAGE")

# ---------------------------------------------------------------- architecture
# The running machine (uname -m), or for --root the image's /bin/sh (ELF e_machine).
arch_name() {
	case $1 in
	x86_64 | amd64 | 3e00) echo amd64 ;;
	aarch64 | arm64 | b700) echo arm64 ;;
	armv6l | armv7l | armv8l | arm | 2800) echo arm ;;
	*) echo "$1" ;;
	esac
}
if [ -z "$R" ]; then
	TARGET_ARCH=$(arch_name "$(uname -m)")
elif [ -e "$R/bin/sh" ] && command -v od >/dev/null 2>&1; then
	sh_bin=$R/bin/sh
	i=0
	while [ -L "$sh_bin" ] && [ $i -lt 8 ]; do # resolve inside ROOT, not on this host
		l=$(readlink "$sh_bin")
		case $l in /*) sh_bin=$R$l ;; *) sh_bin=$(dirname "$sh_bin")/$l ;; esac
		i=$((i + 1))
	done
	[ "$(od -An -tx1 -N4 "$sh_bin" | tr -d ' \n')" = 7f454c46 ] || die 3 "$ROOT/bin/sh is not an ELF binary; cannot tell the image's architecture"
	TARGET_ARCH=$(arch_name "$(od -An -tx1 -j18 -N2 "$sh_bin" | tr -d ' \n')")
else
	TARGET_ARCH=$PKG_ARCH
	warn "$ROOT has no /bin/sh to tell its architecture; assuming $PKG_ARCH"
fi
if [ "$TARGET_ARCH" = arm ]; then
	die 3 "32-bit ARM is not supported: onnxruntime has no linux-arm build in the package edgefleet uses; use a 64-bit (arm64) OS image"
fi
if [ "$TARGET_ARCH" != "$PKG_ARCH" ]; then
	die 3 "this package is for linux/$PKG_ARCH but $ROOT is linux/$TARGET_ARCH: use edgefleet-agent-$PKG_VERSION-linux-$TARGET_ARCH.tar.gz"
fi

# ---------------------------------------------------------------- provisioning
UPGRADE=0
[ -f "$R$CONF" ] && UPGRADE=1
if [ -z "$CONFIG" ] && [ -z "$TOKEN" ] && [ "$UPGRADE" = 0 ]; then
	die 5 "no provisioning: give --config FILE (from 'edgefleet device add ID --config-out FILE') or --enroll-token T --control-plane URL"
fi
if [ -n "$CONFIG" ]; then
	[ -r "$CONFIG" ] || die 5 "--config $CONFIG: cannot read it"
	grep -q '^device_id: *[^ ]' "$CONFIG" || die 5 "--config $CONFIG: no device_id; is this an agent config from 'edgefleet device add --config-out'?"
	grep -q '^root_public_key:' "$CONFIG" || die 5 "--config $CONFIG: no root_public_key; the agent trusts nothing without the fleet's root key"
	grep -q '^broker_url: *[^ ]' "$CONFIG" || die 5 "--config $CONFIG: no broker_url"
fi
# Certificate files are checked now, before a token is spent on them: each
# must be readable and hold what its flag says.
check_pem() { # check_pem FLAG FILE WHAT PATTERN
	[ -r "$2" ] || die 5 "$1 $2: cannot read it"
	grep -q -- "$4" "$2" || die 5 "$1 $2: no $3 in it (want a PEM file)"
}
[ -z "$TLS_CA" ] || check_pem --tls-ca-file "$TLS_CA" "PEM certificate" "-----BEGIN CERTIFICATE-----"
[ -z "$TLS_CERT" ] || check_pem --tls-cert-file "$TLS_CERT" "PEM certificate" "-----BEGIN CERTIFICATE-----"
[ -z "$TLS_KEY" ] || check_pem --tls-key-file "$TLS_KEY" "PEM private key" "PRIVATE KEY-----"
if [ -n "$TLS_CA$TLS_CERT" ] && [ -z "$CONFIG" ] && [ -z "$TOKEN" ] && [ "$UPGRADE" = 0 ]; then
	die 5 "--tls-*-file need a config: give --config FILE or --enroll-token T --control-plane URL"
fi
if [ -n "$TOKEN" ]; then
	# Look for the enroll command without running the binary (it may be
	# for another architecture, and an old one would start the agent).
	if ! grep -q 'edgefleet-agent enroll' "$PKG/bin/edgefleet-agent"; then
		die 5 "enrollment needs a newer agent: edgefleet-agent $PKG_VERSION has no 'enroll' command; provision with --config FILE from 'edgefleet device add ID --config-out FILE'"
	fi
fi

# ---------------------------------------------------------------- systemd
HAVE_SYSTEMD=1
if [ -z "$R" ]; then
	if ! systemd_live; then
		if [ "$NO_START" = 0 ]; then
			die 4 "systemd is not running here; pass --no-start to install anyway and run '$PREFIX/bin/edgefleet-agent --config $CONF' under your init system"
		fi
		HAVE_SYSTEMD=0
		warn "systemd is not running: the unit is installed but not enabled"
	fi
elif [ ! -d "$R/lib/systemd" ] && [ ! -d "$R/usr/lib/systemd" ]; then
	HAVE_SYSTEMD=0
	warn "$ROOT has no systemd: the unit is installed but not enabled; start the agent with your init system"
fi

# ---------------------------------------------------------------- enrollment
# The token is exchanged before anything is written: a failed enrollment
# leaves the machine as it was. The config it writes is then installed like
# a provisioning bundle.
if [ -n "$TOKEN" ]; then
	[ -n "$WORK" ] || WORK=$(mktemp -d)
	set +e
	# enroll checks the certificate files as given; the config it writes
	# names them where they are installed (below).
	set -- --token "$TOKEN" --control-plane "$CONTROL_PLANE" --config-out "$WORK/enrolled.yaml" --data-dir "$DATA_DIR"
	[ -z "$TLS_CA" ] || set -- "$@" --tls-ca-file "$TLS_CA"
	[ -z "$TLS_CERT" ] || set -- "$@" --tls-cert-file "$TLS_CERT" --tls-key-file "$TLS_KEY"
	"$PKG/bin/edgefleet-agent" enroll "$@" $ENROLL_ARGS
	rc=$?
	set -e
	case $rc in
	0) ;;
	126 | 127) die 3 "cannot run the linux/$PKG_ARCH agent on this machine to enroll; enroll on the device itself, or use --config" ;;
	*) die 5 "enrollment with $CONTROL_PLANE failed (see above); a token is single-use and expires: create a new one with 'edgefleet device enroll ID'" ;;
	esac
	CONFIG=$WORK/enrolled.yaml
fi

# ---------------------------------------------------------------- user
# sysusers.d/tmpfiles.d let systemd create the user and fix modes at first
# boot even when it could not be created now (an image root without /etc/passwd).
mkdir -p "$R/usr/lib/sysusers.d" "$R/usr/lib/tmpfiles.d"
printf 'u %s - "edgefleet agent" %s /usr/sbin/nologin\n' "$USER_NAME" "$DATA_DIR" >"$R/usr/lib/sysusers.d/edgefleet-agent.conf"
{
	printf 'd %s 0750 %s %s -\nz %s 0640 root %s -\n' "$DATA_DIR" "$USER_NAME" "$USER_NAME" "$CONF" "$USER_NAME"
	printf 'z %s 0750 root %s -\nz %s 0644 root %s -\nz %s 0644 root %s -\nz %s 0640 root %s -\n' \
		"$TLS_DIR" "$USER_NAME" "$TLS_CA_DST" "$USER_NAME" "$TLS_CERT_DST" "$USER_NAME" "$TLS_KEY_DST" "$USER_NAME"
} >"$R/usr/lib/tmpfiles.d/edgefleet-agent.conf"
chmod 0644 "$R/usr/lib/sysusers.d/edgefleet-agent.conf" "$R/usr/lib/tmpfiles.d/edgefleet-agent.conf"
if [ -z "$(uid_of "$USER_NAME")" ]; then
	if [ -n "$R" ] && [ ! -f "$R/etc/passwd" ]; then
		warn "$ROOT has no /etc/passwd: user $USER_NAME will be created at first boot (systemd-sysusers)"
	elif command -v useradd >/dev/null 2>&1; then
		set -- --system --user-group --no-create-home --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$USER_NAME"
		[ -z "$R" ] || set -- --root "$ROOT" "$@"
		useradd "$@" 2>/dev/null || die 1 "could not create user $USER_NAME (run as root)"
	elif [ -z "$R" ] && command -v adduser >/dev/null 2>&1; then
		adduser -S -D -H -h "$DATA_DIR" -s /sbin/nologin "$USER_NAME" || die 1 "could not create user $USER_NAME (run as root)"
	else
		die 1 "no useradd or adduser to create user $USER_NAME"
	fi
fi
UID_N=$(uid_of "$USER_NAME")
GID_N=$(gid_of "$USER_NAME")

# ---------------------------------------------------------------- stop for upgrade
WAS_ACTIVE=0
if systemd_live && systemctl is-active --quiet "$UNIT" 2>/dev/null; then
	WAS_ACTIVE=1
	systemctl stop "$UNIT"
fi

# ---------------------------------------------------------------- files
# Each file is written next to its place and renamed over it: a power cut
# leaves the old or the new file, never half of one.
put() { # put SRC DST MODE
	mkdir -p "$(dirname "$2")"
	cp "$1" "$2.new.$$"
	chmod "$3" "$2.new.$$"
	mv -f "$2.new.$$" "$2"
}
if [ -f "$R$PREFIX/bin/edgefleet-agent" ]; then
	cp -p "$R$PREFIX/bin/edgefleet-agent" "$R$PREFIX/bin/edgefleet-agent.previous"
fi
put "$PKG/bin/edgefleet-agent" "$R$PREFIX/bin/edgefleet-agent" 0755
put "$PKG/lib/libonnxruntime.so.1" "$R$PREFIX/lib/libonnxruntime.so.1" 0644
put "$PKG/PACKAGE" "$R$PREFIX/PACKAGE" 0644
put "$PKG/install.sh" "$R$PREFIX/install.sh" 0755
mkdir -p "$R/usr/local/bin"
ln -sfn "$PREFIX/bin/edgefleet-agent" "$R/usr/local/bin/edgefleet-agent"
put "$PKG/systemd/$UNIT" "$R$UNIT_DIR/$UNIT" 0644

mkdir -p "$R$CONF_DIR"
chmod 0755 "$R$CONF_DIR"
put "$PKG/etc/agent.yaml.example" "$R$CONF_DIR/agent.yaml.example" 0644
mkdir -p "$R$DATA_DIR"
chmod 0750 "$R$DATA_DIR"
[ -z "$UID_N" ] || chown "$UID_N:$GID_N" "$R$DATA_DIR"

# Certificates: readable by the agent's group, the key by nobody else.
put_tls() { # put_tls SRC DST MODE
	put "$1" "$R$2" "$3"
	[ -z "$GID_N" ] || chown "0:$GID_N" "$R$2"
}
if [ -n "$TLS_CA$TLS_CERT" ]; then
	mkdir -p "$R$TLS_DIR"
	chmod 0750 "$R$TLS_DIR"
	[ -z "$GID_N" ] || chown "0:$GID_N" "$R$TLS_DIR"
	[ -z "$TLS_CA" ] || put_tls "$TLS_CA" "$TLS_CA_DST" 0644
	if [ -n "$TLS_CERT" ]; then
		put_tls "$TLS_CERT" "$TLS_CERT_DST" 0644
		put_tls "$TLS_KEY" "$TLS_KEY_DST" 0640
	fi
fi

# tls_config FILE: the config's tls_* keys name the installed certificates
# (only those given now; others stay as they are).
tls_config() {
	[ -n "$TLS_CA$TLS_CERT" ] || return 0
	pat=
	[ -z "$TLS_CA" ] || pat='^tls_ca_file:'
	[ -z "$TLS_CERT" ] || pat="${pat:+$pat|}^tls_cert_file:|^tls_key_file:"
	grep -Ev "$pat" "$1" >"$1.tls" || true
	[ -z "$TLS_CA" ] || echo "tls_ca_file: $TLS_CA_DST" >>"$1.tls"
	[ -z "$TLS_CERT" ] || printf 'tls_cert_file: %s\ntls_key_file: %s\n' "$TLS_CERT_DST" "$TLS_KEY_DST" >>"$1.tls"
	mv -f "$1.tls" "$1"
}

if [ -z "$CONFIG" ] && [ -n "$TLS_CA$TLS_CERT" ]; then
	# An upgrade with new certificates: the installed config, pointed at them.
	[ -n "$WORK" ] || WORK=$(mktemp -d)
	cp "$R$CONF" "$WORK/installed.yaml"
	CONFIG=$WORK/installed.yaml
fi
if [ -n "$CONFIG" ]; then
	# The unit lets the agent write only $DATA_DIR (ProtectSystem=strict).
	sed "s|^data_dir:.*|data_dir: $DATA_DIR|" "$CONFIG" >"$R$CONF.new.$$"
	if ! grep -q '^data_dir:' "$R$CONF.new.$$"; then
		echo "data_dir: $DATA_DIR" >>"$R$CONF.new.$$"
	fi
	if ! cmp -s "$CONFIG" "$R$CONF.new.$$" && grep -q '^data_dir:' "$CONFIG"; then
		grep -q "^data_dir: *$DATA_DIR *\$" "$CONFIG" || warn "data_dir set to $DATA_DIR (the only directory the service may write)"
	fi
	tls_config "$R$CONF.new.$$"
	if [ "$UPGRADE" = 1 ] && ! cmp -s "$R$CONF.new.$$" "$R$CONF"; then
		cp -p "$R$CONF" "$R$CONF.previous"
		say "replaced $CONF (the old one is $CONF.previous)"
	fi
	chmod 0640 "$R$CONF.new.$$"
	[ -z "$GID_N" ] || chown "0:$GID_N" "$R$CONF.new.$$"
	mv -f "$R$CONF.new.$$" "$R$CONF"
fi

# ---------------------------------------------------------------- enable
if [ "$HAVE_SYSTEMD" = 1 ]; then
	if [ -n "$R" ]; then
		mkdir -p "$R$UNIT_DIR/multi-user.target.wants"
		ln -sfn "$UNIT_DIR/$UNIT" "$R$UNIT_DIR/multi-user.target.wants/$UNIT"
	else
		systemctl daemon-reload
		systemctl enable "$UNIT" >/dev/null 2>&1
		if [ "$NO_START" = 0 ]; then
			systemctl restart "$UNIT"
		fi
	fi
fi
[ "$WAS_ACTIVE" = 0 ] || [ "$NO_START" = 0 ] || warn "the agent was running and is now stopped (--no-start)"

if [ "$UPGRADE" = 1 ]; then what=upgraded; else what=installed; fi
say "$what edgefleet-agent $PKG_VERSION (linux/$PKG_ARCH) in $ROOT; config $CONF, data $DATA_DIR"
