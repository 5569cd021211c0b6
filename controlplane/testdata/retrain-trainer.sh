#!/bin/sh
# A stand-in external trainer for the retrain tests, following the
# contract: PROGRAM [ARGS] --data DIR --out DIR.
#   retrain-trainer.sh ok MODEL    copies MODEL to OUT/model.onnx
#   retrain-trainer.sh fail -      exits 3 with a reason on stderr
#   retrain-trainer.sh hang PIDFILE a child that sleeps (killed with the
#                                  group); its pid goes to PIDFILE
#   retrain-trainer.sh orphan PIDFILE  leaves a child sleeping in the
#                                  background and exits 3 at once
#   retrain-trainer.sh env -       prints its environment, exits 3
mode=$1
model=$2
shift 2
while [ $# -gt 0 ]; do
	case $1 in
	--data) data=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "unknown argument $1" >&2; exit 64 ;;
	esac
done
[ ! -e "$data/holdout.jsonl" ] || { echo "the held-out rows must not be given to a trainer" >&2; exit 66; }
for f in train.jsonl schema.json manifest.json params.json; do
	[ -f "$data/$f" ] || { echo "missing $data/$f" >&2; exit 65; }
done
echo "training on $(wc -l < "$data/train.jsonl") rows"
case $mode in
ok) cp "$model" "$out/model.onnx" ;;
fail) echo "diverged: loss is NaN" >&2; exit 3 ;;
hang)
	sleep 300 &
	echo $! > "$model"
	wait
	;;
orphan)
	sleep 300 >/dev/null 2>&1 &
	echo $! > "$model"
	echo "left a child behind" >&2
	exit 3
	;;
env)
	env
	exit 3
	;;
esac
