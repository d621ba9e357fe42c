#!/bin/bash
# The train step's per-device memory from XLA's buffer assignment, without waiting for TPU codegen.
#
#   bash bench/aot_dump_memory.sh NAME LAYERS ROWS [key=value ...]     (TARGET=v5e-8 by default)
#
# Runs bench/aot_compile.py --programs train with model.overrides={num_hidden_layers: LAYERS} and
# train.micro_batch_size=ROWS under XLA_FLAGS=--xla_dump_to, waits for the train step's
# *-live-range.txt (written after buffer assignment, minutes before a TPU compile ends: most of a
# 7B compile on the 2-core host is code generation), stops the compile and prints XLA's own
# figures: the live-range peak (arguments included) and the "Total bytes" of the default memory
# space in its memory-usage report. These are not compiled.memory_analysis(): on the shipped v5e-8
# step they read 10.70 / 11.62 GiB where memory_analysis says 2.78 + 9.48 = 12.26 GiB; compare
# them with each other (docs/benchmarks.md, issue 16). One compile at a time (flock).
name=$1; layers=$2; rows=$3; shift 3
d=${DUMP_ROOT:-/tmp/aot_dump}/$name; rm -rf "$d"; mkdir -p "$d"
cd "$(dirname "$0")/.." || exit 2
exec 9>"${DUMP_ROOT:-/tmp/aot_dump}/compile.lock"; flock 9
XLA_FLAGS="--xla_dump_to=$d" JAX_PLATFORMS=cpu nice -n 10 python bench/aot_compile.py \
    --config "${CONFIG:-configs/almol_meditron7b_lpm24.yaml}" --target "${TARGET:-v5e-8}" \
    --programs train "model.overrides={num_hidden_layers: $layers}" \
    "train.micro_batch_size=$rows" "$@" > "$d.log" 2>&1 &
pid=$!
live() { ls "$d"/*jit_train_step*after_optimizations-live-range.txt 2>/dev/null | head -1; }
while kill -0 $pid 2>/dev/null && [ -z "$(live)" ]; do sleep 3; done
sleep 3; kill $pid 2>/dev/null; wait $pid 2>/dev/null
f=$(live)
if [ -z "$f" ]; then echo "error: no buffer assignment dumped (see $d.log)" >&2; exit 1; fi
peak=$(grep "Stack trace breakdown for peak usage" "$f" | sed 's/.*usage: //; s/ bytes//; s/ //g')
report=$(ls "$d"/*jit_train_step*memory-usage-report.txt | head -1)
assigned=$(sed -n 2p "$report" | sed 's/Total bytes: \([0-9]*\).*/\1/')
python -c "print(f'$name layers=$layers rows=$rows $*: live peak {$peak/2**30:.2f} GiB, '
           f'default-space total {$assigned/2**30:.2f} GiB')"
