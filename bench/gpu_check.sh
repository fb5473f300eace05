#!/usr/bin/env bash
# The GPU check (see bench/gpu_check.py): correctness of the CUDA kernels, ms per sweep
# against a device copy and plain torch, mean-field on the device against the CPU, each task's
# training throughput GPU vs CPU, mpirun -n 2 parity, blend vs converge, pytest -m gpu.
#
#   bash bench/gpu_check.sh                 # on a GPU machine; OUT=... to choose where results go
#   bash bench/gpu_check.sh --emulate       # the same flow on a CPU machine (tiny sizes)
#   bash bench/gpu_check.sh --steps ab --words-batch 65536
#
# Installs nothing; runs from the source tree.  Results: $OUT/gpu_check.{json,md} and, for a GPU
# run, a copy of the table in bench/results/gpu_check.md.  Exit code: that of gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
OUT=${OUT:-bench/results/gpu_check_out}
mkdir -p "$OUT"
status=0
# step d (`mpirun -n 2` against one process) runs inside gpu_check.py: it compares params.h5 of
# the two runs with h5py and puts the result in the same table
python3 bench/gpu_check.py --out "$OUT" "$@" || status=$?
if [ -f "$OUT/gpu_check.md" ]; then
    case " $* " in
        *" --emulate "*) ;;      # an emulated run never replaces the GPU table
        *) cp "$OUT/gpu_check.md" bench/results/gpu_check.md ;;
    esac
    echo
    cat "$OUT/gpu_check.md"
fi
exit "$status"
