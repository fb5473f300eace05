#!/usr/bin/env bash
# Sample-parallel training with mpirun: one rank per core (CPU) or per GPU.
#
#   launch/mpirun.sh configs/words.yaml                          # NP ranks on this machine
#   NP=8 HOSTFILE=hosts.txt launch/mpirun.sh configs/words.yaml --set train.epochs=10
#   MPIRUN_ARGS="--bind-to core" launch/mpirun.sh configs/words.yaml
#
# Environment overrides (defaults in brackets):
#   NP            number of ranks [number of cores]
#   HOSTFILE      mpirun hostfile, one "host slots=N" line per node [none: this machine]
#   MPIRUN        the mpirun to use [mpirun on PATH]
#   MPIRUN_ARGS   extra mpirun arguments [none]
#   PYTHON        interpreter with dstrain installed [python3]
# Everything after the config is passed to `dstrain train` (e.g. --set key=value, --run-dir DIR).
# Every rank gets the same environment: the variables in PASS_ENV are forwarded with -x.
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
config=$1
shift

NP=${NP:-$(nproc)}
MPIRUN=${MPIRUN:-mpirun}
PYTHON=${PYTHON:-python3}
MPIRUN_ARGS=${MPIRUN_ARGS:-}
PASS_ENV=(PATH LD_LIBRARY_PATH PYTHONPATH OMP_NUM_THREADS CUDA_VISIBLE_DEVICES DSTRAIN_DEBUG)

args=(-n "$NP")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE")
if "$MPIRUN" --version 2>/dev/null | grep -q "Open MPI"; then
    for name in "${PASS_ENV[@]}"; do
        [ -n "${!name:-}" ] && args+=(-x "$name")
    done
    # more ranks than cores is fine for debugging on a laptop
    [ -z "${HOSTFILE:-}" ] && [ "$NP" -gt "$(nproc)" ] && args+=(--oversubscribe)
    # SITE: containers and CI run as root; remove on clusters that forbid it
    [ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# SITE: add fabric selection here if your cluster needs it, e.g. MPIRUN_ARGS="--mca pml ucx"

# shellcheck disable=SC2086
exec "$MPIRUN" "${args[@]}" $MPIRUN_ARGS "$PYTHON" -m dstrain.cli train --config "$config" "$@"
