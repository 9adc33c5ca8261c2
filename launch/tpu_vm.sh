#!/usr/bin/env bash
# Cloud TPU VM slice: the same command on every worker; LRPO_DISTRIBUTED=1 has each one call
# jax.distributed.initialize(), which finds the slice's workers from the TPU metadata.
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a bash launch/tpu_vm.sh configs/lrpo_gemma3_4b.py /mnt/runs/g4 \
#     "--config.mesh=(('data',4),('fsdp',8),('tensor',1))"
# The workdir must be a path every worker sees (a gcsfuse-mounted bucket or a shared disk): the
# trainer writes logs and checkpoints with local file APIs.
# First time: install on all workers with
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=all --command \
#     "git clone <this repo> lrpo_jax && cd lrpo_jax && bash launch/install.sh && pip install 'jax[tpu]==0.10.2'"
set -euo pipefail
CONFIG=${1:?config file}
WORKDIR=${2:?workdir (a path every worker sees: gcsfuse mount or shared disk)}
shift 2
# Quoted for the remote shell: overrides like "--config.mesh=(('data',4),...)" hold ( ) and quotes.
args=$(printf ' %q' --config "$CONFIG" --workdir "$WORKDIR" "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME:?}" --zone "${ZONE:?}" --worker=all --command \
  "cd lrpo_jax && LRPO_DISTRIBUTED=1 python -m lrpo_jax.train$args"
