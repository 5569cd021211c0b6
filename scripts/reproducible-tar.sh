#!/bin/sh
# reproducible-tar.sh OUT.tar.gz DIR NAME — archive DIR/NAME as OUT, byte
# for byte the same for the same content: entries sorted by name, owner
# root:root by number, every time set to $SOURCE_DATE_EPOCH (default 0),
# directories 0755, no extended-header times, and gzip without a name or
# timestamp. `make cross`/`make dist` and package-agent.sh use it.
set -eu
[ $# -eq 3 ] || { echo "usage: reproducible-tar.sh OUT.tar.gz DIR NAME" >&2; exit 2; }
out=$1 dir=$2 name=$3
epoch=${SOURCE_DATE_EPOCH:-0}
find "$dir/$name" -type d -exec chmod 0755 {} +
# Files keep their own modes but never depend on the umask: group and
# others get what the owner has, less write.
find "$dir/$name" -type f -exec chmod go=u-w {} +
tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner \
	--mtime="@$epoch" -C "$dir" -cf - "$name" | gzip -n -9 >"$out.tmp"
mv -f "$out.tmp" "$out"
