#!/bin/sh
# binsize.sh BINARY [N] — where a Go binary's bytes go: the sizes of its
# code, read-only data and data symbols (go tool nm -size) summed by module
# (third-party), by package (edgefleet) or by top-level directory (standard
# library), largest first, N rows (default 30). BINARY must keep its symbol
# table: build it like the shipped one but without -ldflags "-s -w" (the
# stripped file is the same code; its size is printed by ls). Symbols do not
# include the function tables (.gopclntab), about 35 % of a stripped agent,
# which grow with the code.
set -eu
bin=$1
n=${2:-30}
go tool nm -size "$bin" | awk '
$3 ~ /^[TtRrDd]$/ {
	size = $2; name = $0
	sub(/^ *[0-9a-f]+ +[0-9]+ +[A-Za-z] +/, "", name)
	if (size > 16777216) next                       # zero-filled reservations
	sub(/^(type:|go:itab\.|go:string\.|\.eq\.|\.hash\.)/, "", name)
	sub(/^\*+/, "", name)
	sub(/[\[(,].*/, "", name)
	n = split(name, p, "/")
	last = p[n]; i = index(last, "."); if (i > 1) last = substr(last, 1, i - 1)
	pkg = ""; for (j = 1; j < n; j++) pkg = pkg p[j] "/"; pkg = pkg last
	if (pkg ~ /^github\.com\/edgefleet\/edgefleet\//) key = "edgefleet: " substr(pkg, 32)
	else if (pkg ~ /^(github\.com|go\.opentelemetry\.io|go\.yaml\.in)\//) { split(pkg, q, "/"); key = q[1] "/" q[2] "/" q[3] }
	else if (pkg ~ /^(google\.golang\.org|golang\.org\/x)\//) { split(pkg, q, "/"); key = (pkg ~ /^golang/) ? q[1] "/" q[2] "/" q[3] : q[1] "/" q[2] }
	else if (pkg ~ /^vendor\//) { key = "std: vendor (x/net, x/text, x/crypto)" }
	else if (pkg ~ /^go:func/) key = "funcdata (go:func.*)"
	else if (pkg ~ /^[a-z0-9]+(\/|$)/ && pkg !~ /\./) { split(pkg, q, "/"); key = "std: " q[1] }
	else key = "other"
	sum[key] += size; total += size
}
END {
	for (k in sum) printf "%10d  %s\n", sum[k], k | "sort -rn | head -'"$n"'"
	close("sort -rn | head -'"$n"'")
	printf "%10d  total\n", total
}'
