#!/usr/bin/env bash
# Runs N JAX processes on this machine (CPU collectives over gloo), the same engine a GPU cluster
# or TPU pod uses. Each process gets DEVICES fake CPU devices.
#   NPROC=2 DEVICES=2 bash launch/local_multiprocess.sh python -m lrpo_jax.train --config configs/smoke.py --workdir runs/mp
set -euo pipefail
NPROC=${NPROC:-2}
DEVICES=${DEVICES:-2}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < NPROC; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES}" \
  LRPO_COORDINATOR="127.0.0.1:${PORT}" LRPO_NUM_PROCESSES="$NPROC" LRPO_PROCESS_ID="$i" \
    "$@" &
  pids+=($!)
done
# SIGTERM/SIGINT to this launcher reach every process (each checkpoints and stops, as on a cluster).
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
# One process failing leaves the others blocked in a collective: stop them all at once.
rc=0
for ((n = 0; n < NPROC; n++)); do
  wait -n || { rc=$?; echo "local_multiprocess: a process exited with $rc; stopping the others" >&2
               kill "${pids[@]}" 2>/dev/null || true; break; }
done
wait || true
exit $rc
