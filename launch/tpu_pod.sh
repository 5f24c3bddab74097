#!/usr/bin/env bash
# The main job on every worker of a Cloud TPU VM pod, from your machine:
#
#   TPU_NAME=my-pod ZONE=us-central2-b REPO=alexnet launch/tpu_pod.sh \
#       --config=configs/imagenet.py --workdir=gs://my-bucket/runs/alexnet
#
# REPO is the clone's path on the workers (relative: to the home directory);
# every worker needs the clone and its requirements, and the workdir must be
# shared (a bucket). No coordinator flags: JAX detects the pod.
# Env PYTHON: the workers' interpreter (default python3; TPU VM images have
# no `python`).
set -u

fail() { echo "$0: $*" >&2; exit 2; }
[[ -n ${TPU_NAME:-} ]] || fail "set TPU_NAME to the TPU VM's name"
[[ -n ${ZONE:-} ]] || fail "set ZONE to the TPU VM's zone (e.g. us-central2-b)"
[[ -n ${REPO:-} ]] || fail "set REPO to the repository's path on the workers"

# The flags pass through a remote shell: quote each so that it arrives as is.
command="cd $(printf %q "$REPO") && $(printf %q "${PYTHON:-python3}") -m alexnet_jax.main"
(($#)) && command+=$(printf ' %q' "$@")
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
    --command="$command"
