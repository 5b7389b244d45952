#!/usr/bin/env bash
# Run a training command until it finishes, restarting it after preemption or a crash. Every restart resumes from
# the newest checkpoint in the command's --workdir (alexnet_jax.main does that by itself).
#
#   launch/restart.sh [--max_failures=N] [--backoff_secs=S] [--quick_exit_secs=Q] [--dry_run] -- COMMAND ...
#
# Exit statuses of COMMAND (the project's one mapping, alexnet_jax/cli.py; launch/command.py's `--combine` makes one
# status of several workers' or tasks'; SLURM's requeue in launch/slurm.sbatch and the GKE manifests' failure
# policies act on the same codes):
#   0         done: stop with 0
#   1, 2      a clear error from the trainer (bad config value or data, NaN loss) or a bad command line: rerunning
#             cannot fix it, stop with that status
#   126, 127  a setup error (the interpreter or the command is missing, e.g. no .venv before `install`): stop
#   75        preempted (SIGTERM, checkpoint saved) or a transient error (I/O, network, an unreachable peer):
#             restart after a short pause (min(5, S) seconds). A 75 after at least Q seconds (default 300) of running
#             is progress: the failure count starts again. A 75 sooner than that (a transient error that lasts, a
#             peer that is never there) counts as a failure, with the full back-off, like a crash
#   other     a crash, a lost peer (134, SIGABRT from JAX's coordination service), a kill (137), ssh failing (255):
#             restart after S seconds (default 30)
# At most N (default 10) failures in a row, then stop with the last status.
# SIGTERM/SIGINT sent to this script are passed on to COMMAND (which saves and exits 75), and then it stops.
set -uo pipefail

max_failures=10
backoff_secs=30
quick_exit_secs=300
dry_run=0
usage="usage: launch/restart.sh [--max_failures=N] [--backoff_secs=S] [--quick_exit_secs=Q] [--dry_run] -- COMMAND ..."
number() {  # number NAME VALUE MIN: VALUE is a whole number >= MIN, or one error line and exit 2
  if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$((10#$2))" -lt "$3" ]; then
    echo "error: restart.sh: --$1=$2: give a whole number of at least $3 (e.g. --$1=$(( $3 > 0 ? 10 : 30 )))" >&2
    exit 2
  fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --max_failures=*) max_failures="${1#*=}"; number max_failures "$max_failures" 1 ;;
    --backoff_secs=*) backoff_secs="${1#*=}"; number backoff_secs "$backoff_secs" 0 ;;
    --quick_exit_secs=*) quick_exit_secs="${1#*=}"; number quick_exit_secs "$quick_exit_secs" 0 ;;
    --dry_run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "error: restart.sh: unknown option $1 (options go before --); ${usage}" >&2; exit 2 ;;
  esac
  shift
done
if [ $# -eq 0 ]; then
  echo "$usage" >&2
  exit 2
fi
max_failures=$((10#$max_failures)); backoff_secs=$((10#$backoff_secs)); quick_exit_secs=$((10#$quick_exit_secs))
retry_secs=$((backoff_secs < 5 ? backoff_secs : 5))
if [ "$dry_run" -eq 1 ]; then
  echo "would run until it exits 0 (restart on 75 after ${retry_secs}s, on crashes after ${backoff_secs}s, at most" \
    "${max_failures} failures in a row; a 75 within ${quick_exit_secs}s of the start is a failure):"
  printf '%q ' "$@"
  echo
  exit 0
fi

child=0
stopping=0
forward() {
  stopping=$((stopping + 1))
  if [ "$child" -ne 0 ]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap forward TERM INT

failures=0
attempt=0
while true; do
  attempt=$((attempt + 1))
  echo "[restart] attempt ${attempt}: $*" >&2
  started=$SECONDS
  "$@" &
  child=$!
  status=0
  seen="$stopping"
  wait "$child" || status=$?
  # a trapped signal interrupts wait (status 128 + signal): wait again for the child's own exit status
  while [ "$status" -gt 128 ] && [ "$stopping" -ne "$seen" ]; do seen="$stopping"; status=0; wait "$child" || status=$?; done
  child=0
  ran=$((SECONDS - started))
  case "$status" in
    0) echo "[restart] finished after ${attempt} attempt(s)" >&2; exit 0 ;;
    1|2) echo "[restart] stopped: the command reported an error (status ${status}) that a restart cannot fix" >&2
         exit "$status" ;;
    126|127) echo "[restart] stopped: status ${status}, a setup error: the command or its interpreter could not be" \
                  "run (not found or not executable; on a TPU slice run 'launch/tpu_pod.sh install' first)" >&2
             exit "$status" ;;
  esac
  if [ "$stopping" -gt 0 ]; then
    echo "[restart] stopped by a signal (command status ${status}); rerun this to resume" >&2
    exit "$status"
  fi
  pause="$backoff_secs"
  if [ "$status" -eq 75 ] && [ "$ran" -ge "$quick_exit_secs" ]; then
    echo "[restart] status 75 (preempted or a transient error) after ${ran}s: resuming from the last checkpoint" \
      "in ${retry_secs}s" >&2
    failures=0
    sleep "$retry_secs"
    continue
  fi
  failures=$((failures + 1))
  what="status ${status}"
  if [ "$status" -eq 75 ]; then
    what="status 75 (preempted or a transient error) after only ${ran}s (under --quick_exit_secs=${quick_exit_secs})"
  fi
  if [ "$failures" -ge "$max_failures" ]; then
    echo "[restart] giving up: ${failures} failures in a row (last: ${what})" >&2
    exit "$status"
  fi
  echo "[restart] ${what} (failure ${failures} of ${max_failures}): restarting in ${pause}s" >&2
  sleep "$pause"
done
