#!/usr/bin/env bash
# Every replay behind the README's *Evaluation on the Azure traces* and *Fixed fleet* tables, one after the
# other, each report kept as JSON and turned into its markdown tables by bench/readme_tables.py.
#
# Run: bench/readme_replays.sh OUT_DIR [NAME ...]   (from the project root; NAME: conv code conv2x day
#      ablation fleet-conv2 fleet-code7 fleet-code8; default: all). Writes OUT_DIR/NAME.json (the
#      `wattgate simulate --json` report), OUT_DIR/NAME.md (its tables) and OUT_DIR/NAME.log (stderr).
# Every figure in them is modelled (the serving model). About 15-25 minutes on 2 cores with all of them.
set -euo pipefail

out=${1:?usage: bench/readme_replays.sh OUT_DIR [NAME ...]}
shift
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
data=${WATTGATE_DATA:-../shared/data/traces}
conv=$data/AzureLLMInferenceTrace_conv.csv
code=$data/AzureLLMInferenceTrace_code.csv
all="single-pool,multi-pool,scale-inst,scale-shard,scale-freq,wattgate,wattgate-classic,oracle"
few="single-pool,scale-freq,wattgate,wattgate-classic,oracle"
fleet="single-pool,fixed-single-pool,fixed-scale-freq,fixed-wattgate,wattgate"

run() {  # NAME TABLE-FLAGS -- SIMULATE-ARGS...
    local name=$1 flags=$2
    shift 3
    echo "== $name: wattgate simulate $* --json" >&2
    local t0=$SECONDS
    "$py" -m wattgate simulate "$@" --json >"$out/$name.json" 2>"$out/$name.log"
    # shellcheck disable=SC2086
    "$py" bench/readme_tables.py "$out/$name.json" $flags >"$out/$name.md"
    echo "   $((SECONDS - t0)) s -> $out/$name.md" >&2
}

names=${*:-conv code conv2x day ablation fleet-conv2 fleet-code7 fleet-code8}
for n in $names; do
    case $n in
        conv) run conv "--bold wattgate" -- "$conv" --policies "$all" ;;
        code) run code "--bold wattgate" -- "$code" --policies "$all" ;;
        conv2x) run conv2x "--bold wattgate" -- "$conv" --scale 2 --policies "$few" ;;
        day) run day "--bold wattgate" -- "$conv" --days 1 --policies "$few" ;;
        ablation) run ablation "--bold wattgate" -- "$conv" --ablation ;;
        fleet-conv2) run fleet-conv2 "--fleet --bold fixed-wattgate" -- "$conv" --fixed-fleet 2 --policies "$fleet" ;;
        fleet-code7) run fleet-code7 "--fleet --bold fixed-wattgate" -- "$code" --fixed-fleet 7 --policies "$fleet" ;;
        fleet-code8) run fleet-code8 "--fleet --bold fixed-wattgate" -- "$code" --fixed-fleet 8 --policies "$fleet" ;;
        *) echo "unknown replay: $n" >&2; exit 2 ;;
    esac
done
