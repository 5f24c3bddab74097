#!/usr/bin/env bash
# N processes of the main job on this machine, for trying (and testing) the
# multi-process code paths without a cluster:
#
#   launch/local.sh 2 --config=configs/default.py --workdir=/tmp/run
#
# Run it from the repository root (main's --config path is relative to it).
# Not for training on a multi-GPU node: there one JAX process normally drives
# all the GPUs, so run the main job directly instead.
#
# Env: PYTHON (interpreter, default python), PORT (coordinator port, default a
# free one). Exit status: the first non-zero one other than 75 among the
# processes, else 75 if any was preempted (rerun to continue), else 0.
set -u

n=${1:-}
if [[ ! $n =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [main flags...]  (N: number of processes, >= 1)" >&2
  exit 2
fi
shift
python=${PYTHON:-python}
# Port 0 makes the kernel pick a free port; the small window until process 0
# binds it again is fine on one machine.
port=${PORT:-$("$python" -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')} || exit 1

pids=()
# Ctrl-C: background children of a script ignore SIGINT (and Python then
# never raises KeyboardInterrupt), so both signals become SIGTERM, which the
# main job answers by saving a checkpoint.
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT

# A trapped signal ends `wait` early: wait again while the process lives,
# then collect its status (bash keeps it).
wait_for() { while kill -0 "$1" 2>/dev/null; do wait "$1"; done; wait "$1"; }

prefixers=()
for ((i = 0; i < n; i++)); do
  # The prefixer is opened first so that $! can name it and we can wait for
  # its last lines before exiting; it ignores the signals so that it outlives
  # python (no lost checkpoint messages, no SIGPIPE).
  exec 3> >(trap '' TERM INT; exec sed -u "s/^/[process $i] /")
  prefixers+=($!)
  "$python" -m alexnet_jax.main "$@" --coordinator_address="127.0.0.1:$port" \
      --num_processes="$n" --process_id="$i" >&3 2>&1 &
  pids+=($!)
  exec 3>&-
done

status=0 preempted=0
for pid in "${pids[@]}"; do
  wait_for "$pid"; s=$?
  if ((s == 75)); then preempted=1; elif ((s != 0 && status == 0)); then status=$s; fi
done
for pid in "${prefixers[@]}"; do wait_for "$pid"; done
((status == 0 && preempted)) && status=75
exit "$status"
