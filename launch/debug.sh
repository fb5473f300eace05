#!/usr/bin/env bash
# One process, no MPI: the debug mode (what README's first command runs).
#
#   launch/debug.sh                                   # configs/words_debug.yaml
#   launch/debug.sh configs/words.yaml --set train.epochs=2
#   THREADS=2 launch/debug.sh configs/words_debug.yaml
#
# Environment overrides (defaults in brackets):
#   PYTHON    interpreter with dstrain installed [python3]
#   THREADS   torch CPU threads [the config's run.threads]
#   DSTRAIN_DEBUG=1 shows tracebacks for bad input too
# Everything after the config is passed to `dstrain train`.
set -euo pipefail

config=${1:-configs/words_debug.yaml}
[ $# -gt 0 ] && shift
PYTHON=${PYTHON:-python3}
extra=()
[ -n "${THREADS:-}" ] && extra=(--set "run.threads=$THREADS")
# run.communicator=none: even inside an mpirun or srun environment this stays one process
exec "$PYTHON" -m dstrain.cli train --config "$config" "$@" "${extra[@]}" --set run.communicator=none
