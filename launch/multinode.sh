#!/usr/bin/env bash
# Several GPU nodes without a scheduler: run this on every node, from the
# repository root, with the same main flags and a workdir that all nodes see:
#
#   COORDINATOR=node0:12345 NUM_NODES=2 NODE_RANK=0 launch/multinode.sh \
#       --config=configs/imagenet.py --workdir=/nfs/runs/alexnet
#
# One process per node, driving all of that node's GPUs. COORDINATOR is node
# 0's host and a free port, reachable from the others; NODE_RANK is 0..N-1.
# Env PYTHON: interpreter (default python).
set -u

fail() { echo "$0: $*" >&2; exit 2; }
[[ -n ${COORDINATOR:-} ]] || fail "set COORDINATOR to HOST:PORT of node 0 (e.g. node0:12345)"
[[ $COORDINATOR =~ ^[^:].*:[0-9]+$ ]] || fail "COORDINATOR=$COORDINATOR is not HOST:PORT"
[[ ${NUM_NODES:-} =~ ^[1-9][0-9]*$ ]] || fail "set NUM_NODES to the number of nodes (>= 1), got '${NUM_NODES:-}'"
[[ ${NODE_RANK:-} =~ ^(0|[1-9][0-9]*)$ ]] || fail "set NODE_RANK to this node's rank, 0..$((NUM_NODES - 1)), got '${NODE_RANK:-}'"
((NODE_RANK < NUM_NODES)) || fail "NODE_RANK=$NODE_RANK must be below NUM_NODES=$NUM_NODES"

# exec: the node's SIGTERM then reaches the job itself, and the job's status
# (75: preempted, saved; rerun the same command) is this script's.
exec "${PYTHON:-python}" -m alexnet_jax.main "$@" \
    --coordinator_address="$COORDINATOR" --num_processes="$NUM_NODES" \
    --process_id="$NODE_RANK"
