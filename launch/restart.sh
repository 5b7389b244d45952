#!/usr/bin/env bash
# Run a training command until it finishes, restarting it after preemption or a crash. Every restart resumes from
# the newest checkpoint in the command's --workdir (alexnet_jax.main does that by itself).
#
#   launch/restart.sh [--max_failures=N] [--backoff_secs=S] [--dry_run] -- COMMAND ...
#
# Exit statuses of COMMAND (the project's one mapping, alexnet_jax/cli.py; SLURM's requeue in launch/slurm.sbatch
# and the GKE manifests' failure policies act on the same codes):
#   0       done: stop with 0
#   1, 2    a clear error from the trainer (bad config value or data, NaN loss) or a bad command line: rerunning
#           cannot fix it, stop with that status
#   75      preempted (SIGTERM, checkpoint saved) or a transient error (I/O, network, an unreachable peer): restart
#           at once; does not count as a failure
#   other   a crash, a lost peer (134, SIGABRT from JAX's coordination service), a kill (137): restart after
#           --backoff_secs, at most --max_failures times in a row
# SIGTERM/SIGINT sent to this script are passed on to COMMAND (which saves and exits 75), and then it stops.
set -uo pipefail

max_failures=10
backoff_secs=30
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --max_failures=*) max_failures="${1#*=}" ;;
    --backoff_secs=*) backoff_secs="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "restart.sh: unknown option $1 (options go before --)" >&2; exit 2 ;;
  esac
  shift
done
if [ $# -eq 0 ]; then
  echo "usage: launch/restart.sh [--max_failures=N] [--backoff_secs=S] [--dry_run] -- COMMAND ..." >&2
  exit 2
fi
if [ "$dry_run" -eq 1 ]; then
  echo "would run until it exits 0 (restart on 75 at once, on crashes after ${backoff_secs}s, at most ${max_failures} failures in a row):"
  printf '%q ' "$@"
  echo
  exit 0
fi

child=0
stopping=0
forward() {
  stopping=1
  if [ "$child" -ne 0 ]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap forward TERM INT

failures=0
attempt=0
while true; do
  attempt=$((attempt + 1))
  echo "[restart] attempt ${attempt}: $*" >&2
  "$@" &
  child=$!
  status=0
  wait "$child" || status=$?
  # a trapped signal interrupts wait: wait again for the child's own exit status
  while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
  child=0
  case "$status" in
    0) echo "[restart] finished after ${attempt} attempt(s)" >&2; exit 0 ;;
    1|2) echo "[restart] stopped: the command reported an error (status ${status}) that a restart cannot fix" >&2
         exit "$status" ;;
  esac
  if [ "$stopping" -eq 1 ]; then
    echo "[restart] stopped by a signal (command status ${status}); rerun this to resume" >&2
    exit "$status"
  fi
  if [ "$status" -eq 75 ]; then
    echo "[restart] preempted (status 75): resuming from the last checkpoint" >&2
    failures=0
    continue
  fi
  failures=$((failures + 1))
  if [ "$failures" -ge "$max_failures" ]; then
    echo "[restart] giving up: ${failures} failures in a row (last status ${status})" >&2
    exit "$status"
  fi
  echo "[restart] status ${status} (failure ${failures} of ${max_failures}): restarting in ${backoff_secs}s" >&2
  sleep "$backoff_secs"
done
