#!/usr/bin/env bash
# test-stress: the load rehearsal. Runs `make test` again and again while the
# machine is busy, stops at the first failure, and records every run.
#
#   scripts/test-stress.sh [--runs N] [--load cpu|twin|sim|none] [--log-dir D]
#
# --load cpu   (default) beside each run: 2 busy loops per core and a disk
#              writer doing synced 4 MiB writes, both ended with the run
# --load twin  two `make test` runs at once; both must pass
# --load sim   `make sim` (every committed fleet-sim scenario) beside
#              `make test`; both must pass
# --load none  the suite alone (a baseline)
#
# Each run's output goes to D/run-N[-sim|-twin].log (default
# .stress/<date>), one line per run to D/summary.tsv: start (UTC), load,
# seconds, 1-minute load average at the end, result, failing tests. `make
# test-stress` runs it with the defaults. docs/testing.md records the runs.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=10
load=cpu
logdir=""
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) runs="$2"; shift 2 ;;
	--load) load="$2"; shift 2 ;;
	--log-dir) logdir="$2"; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "test-stress: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case "$load" in cpu | twin | sim | none) ;; *) echo "test-stress: --load $load: want cpu, twin, sim or none" >&2; exit 2 ;; esac
[ -n "$logdir" ] || logdir=".stress/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$logdir"
summary="$logdir/summary.tsv"
[ -s "$summary" ] || printf 'start\tload\tseconds\tloadavg1\tresult\tfailures\n' >"$summary"

# Everything the rehearsal starts in the background is in this process
# group list and is killed on exit, whatever the exit.
bg=()
cleanup() {
	for p in "${bg[@]}"; do kill -- -"$p" 2>/dev/null || kill "$p" 2>/dev/null; done
	bg=()
}
trap cleanup EXIT INT TERM

# start_load starts the CPU and disk load; its pids go into bg.
start_load() {
	local n=$(($(nproc) * 2)) i
	for ((i = 0; i < n; i++)); do
		setsid sh -c 'while :; do :; done' &
		bg+=($!)
	done
	local scratch
	scratch=$(mktemp -d)
	setsid sh -c "trap 'rm -rf $scratch' EXIT; while :; do dd if=/dev/zero of=$scratch/blob bs=4M count=32 oflag=dsync status=none; rm -f $scratch/blob; done" &
	bg+=($!)
}

# failures lists the failing tests and scenarios in a log, on one line.
failures() {
	grep -hoE -- '--- FAIL: [^ ]+|^FAIL[[:space:]]+[^ ]+|step [0-9]+ [a-z_]+ \(line [0-9]+\) FAILED' "$@" 2>/dev/null |
		sed -E 's/--- FAIL: //; s/^FAIL[[:space:]]+/FAIL /' | sort -u | paste -sd ' ' -
}

make deps >/dev/null || exit 1
make build >/dev/null || exit 1 # bin/fleet-sim for --load sim; warms the build cache

for ((run = 1; run <= runs; run++)); do
	start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	t0=$(date +%s)
	log="$logdir/run-$run.log"
	ok=1
	case "$load" in
	none)
		make test >"$log" 2>&1 || ok=0
		;;
	cpu)
		start_load
		make test >"$log" 2>&1 || ok=0
		cleanup
		;;
	twin)
		make test >"$log-twin" 2>&1 &
		twin=$!
		make test >"$log" 2>&1 || ok=0
		wait "$twin" || ok=0
		cat "$log-twin" >>"$log" && rm -f "$log-twin"
		;;
	sim)
		make sim >"$logdir/run-$run-sim.log" 2>&1 &
		sim=$!
		make test >"$log" 2>&1 || ok=0
		wait "$sim" || ok=0
		;;
	esac
	secs=$(($(date +%s) - t0))
	la=$(cut -d' ' -f1 /proc/loadavg)
	result=pass
	fails=""
	if [ $ok = 0 ]; then
		result=FAIL
		fails=$(failures "$logdir"/run-"$run"*.log)
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$start" "$load" "$secs" "$la" "$result" "$fails" >>"$summary"
	echo "test-stress: run $run/$runs ($load load): $result in ${secs}s${fails:+: $fails}"
	if [ $ok = 0 ]; then
		echo "test-stress: stopped at the first failure; logs in $logdir" >&2
		exit 1
	fi
done
echo "test-stress: $runs runs passed under $load load; logs in $logdir"
