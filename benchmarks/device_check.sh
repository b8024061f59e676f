#!/usr/bin/env bash
# The GPU checks of burn-plugin in one script, sized for under 10 minutes on one GPU:
#   1. the test suite with CUDA present (every test taking the `device` fixture runs on cpu and cuda;
#      the two-process torchrun test runs on gloo as everywhere);
#   2. a BadNets record on Fashion-MNIST trained there with preactresnet18 (EPOCHS);
#   3. the boundary benchmark against Foolbox (benchmarks/boundary_speed.py) on that record, on CUDA;
#   4. if time allows, BURN with the paper's settings on it (skipped under STEP4_MIN_S seconds left).
#
#   bash benchmarks/device_check.sh              # on a machine with a CUDA GPU
#   bash benchmarks/device_check.sh --dry-run    # on CPU: every step at toy sizes, to check the script
#
# Environment: OUT (folder for logs and JSON, default ./device_check_out), BUDGET_S (600), FMNIST (the
# Fashion-MNIST idx files' folder, default /usr/share/datasets/fashion-mnist; carry it to a GPU machine), EPOCHS (record epochs, default
# 10: BackdoorBench's 100 do not fit), PY (python). Foolbox missing: the benchmark says so and skips it.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PY:-python}
OUT=${OUT:-device_check_out}
BUDGET_S=${BUDGET_S:-600}
STEP4_MIN_S=${STEP4_MIN_S:-180}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
say() { echo "[device_check $(date +%T), $(left) s left] $*" | tee -a "$OUT/summary.txt"; }

if [ $DRY = 1 ]; then
  DEVICE=cpu; PYTEST_SEL=(tests/test_boundary.py -k closed_form); N=16; SUBSET=600; EPOCHS=1; MODEL=smallresnet
  BURN_ARGS=(--rounds 1 --epochs 1 --candidates 3 --max_iter 5)
else
  DEVICE=cuda; PYTEST_SEL=(tests); N=512; SUBSET=0; EPOCHS=${EPOCHS:-10}; MODEL=preactresnet18; BURN_ARGS=()
fi
say "device $DEVICE; $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
if [ $DRY = 0 ] && ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "no CUDA GPU here: run with --dry-run on CPU"; exit 2
fi

say "1/4 tests (${PYTEST_SEL[*]})"
timeout $(( $(left) > 60 ? $(left) - 30 : 30 )) $PY -m pytest -q -rs "${PYTEST_SEL[@]}" > "$OUT/tests.log" 2>&1
rc=$?; say "tests: rc=$rc; $(tail -n 1 "$OUT/tests.log")"

if [ ! -d "$FMNIST" ]; then say "2-4 skipped: no Fashion-MNIST at $FMNIST (set FMNIST to its idx files)"; exit 0; fi
mkdir -p "$OUT/data/fashionmnist/FashionMNIST/raw"   # the layout --dataset_path expects, linked to FMNIST
ln -sf "$(cd "$FMNIST" && pwd)"/* "$OUT/data/fashionmnist/FashionMNIST/raw/"
REC="$OUT/record/badnet_fm_${MODEL}"
SUB=(); [ "$SUBSET" -gt 0 ] && SUB=(--train_subset "$SUBSET" --test_subset 500)
say "2/4 record: badnet, fashionmnist, $MODEL, $EPOCHS epochs, on $DEVICE"
timeout $(( $(left) > 60 ? $(left) - 30 : 30 )) $PY -m burn_plugin -q attack --attack badnet --dataset fashionmnist \
  --model "$MODEL" --epochs "$EPOCHS" --device "$DEVICE" --dataset_path "$OUT/data" "${SUB[@]}" --out "$REC" \
  --overwrite > "$OUT/attack.log" 2>&1
rc=$?; say "record: rc=$rc; $(grep -m 1 'ACC' "$OUT/attack.log")"
[ $rc = 0 ] || exit 0

say "3/4 boundary benchmark against Foolbox on $DEVICE (-n $N)"
timeout $(( $(left) > 60 ? $(left) - 30 : 30 )) $PY benchmarks/boundary_speed.py --record "$REC" --device "$DEVICE" \
  -n "$N" --skip torchattacks,grid --repeat 1 --json "$OUT/boundary_speed.json" > "$OUT/boundary_speed.log" 2>&1
rc=$?; say "boundary benchmark: rc=$rc (numbers in $OUT/boundary_speed.log)"
tail -n 25 "$OUT/boundary_speed.log" >> "$OUT/summary.txt"

if [ "$(left)" -lt "$STEP4_MIN_S" ]; then
  say "4/4 skipped: $(left) s left, under STEP4_MIN_S=$STEP4_MIN_S"; exit 0
fi
say "4/4 BURN, paper settings${BURN_ARGS[*]:+ (dry run: ${BURN_ARGS[*]})}"
timeout $(( $(left) > 30 ? $(left) - 10 : 20 )) $PY -m burn_plugin defend --attack_folder "$REC" --method burn \
  --device "$DEVICE" -q --eval_every_round false "${BURN_ARGS[@]}" > "$OUT/burn.log" 2>&1
rc=$?; say "BURN: rc=$rc"; grep -E 'before|after|AUROC|time:' "$OUT/burn.log" | tee -a "$OUT/summary.txt"
say "done in $(( $(date +%s) - START )) s"
