#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, copy this repository to every worker, install, run one process per
# worker (JAX finds the other workers through the TPU VM's metadata), and delete the slice.
#
#   launch/tpu_pod.sh [--dry_run] STEP [-- TRAINING FLAGS]
#   STEP: create | copy | install | run | logs | stop | delete | all (create, copy, install, run)
#
#   export TPU_NAME=alexnet ZONE=us-central2-b ACCELERATOR=v4-32 PROJECT=my-project
#   export DATA_DIR=/mnt/data/imagenet_prepared WORKDIR=/mnt/work/paper   # paths every worker sees
#   launch/tpu_pod.sh all -- --config=configs/paper.py --config.batch_size=1024
#   launch/restart.sh -- launch/tpu_pod.sh run -- --config=configs/paper.py   # spot: resume after preemption
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (v4-32, v5litepod-16, v5p-16, v6e-16, ...), RUNTIME (the TPU
# software version; default from ACCELERATOR, as Cloud TPU's "TPU software versions" page says: v6e
# v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base), PROJECT,
# SPOT=1 (a spot slice), QUEUED=1 (a queued resource, waited on until ACTIVE; SPOT and QUEUED take 1/true or
# 0/false, anything else is refused), DATA_DIR, WORKDIR, PYTHON_VERSION
# (3.12), INSTALL_CMD (what each worker runs in ~/alexnet_jax to install; default below). The data and the workdir
# must be visible to every worker under the same path: a Filestore (NFS) share, or a GCS bucket mounted with
# gcsfuse in the install step (GCSFUSE_BUCKET=bucket GCSFUSE_MOUNT=/mnt/gcs).
#
# Python: those images have Python 3.10 and this package needs 3.11+, so `install` puts uv (from PyPI) in the
# user's ~/.local and makes ~/alexnet_jax/.venv with uv's own Python ${PYTHON_VERSION}, then `jax[tpu]`.
#
# `run` trains in the foreground: one ssh per worker, each running the one training command (built by
# launch/command.py: --config first, then the kit's flags, then the rest) with its output in ~/train.log too, and
# returns when every worker has ended, with one exit code a supervisor acts on (launch/command.py --combine, the
# project's one rule: 1 or 2 from any worker, an error to fix, wins; 127 from any worker means the interpreter is
# missing: run `install`; 0 when all are 0; 75 only when every failure was 75; else the first crash status, e.g.
# 134, 137, 255 from ssh, which launch/restart.sh retries with its back-off and --max_failures). Before it starts, a
# training process left by an earlier run (its pid in ~/alexnet_jax/train.pid) is stopped and libtpu's lock file
# /tmp/libtpu_lockfile removed. SIGTERM or SIGINT (Ctrl-C) to `run` is passed on to the trainers themselves (ssh
# without a terminal passes no signal): each worker's trainer gets SIGTERM through its pid file, saves and exits 75,
# and `run` returns when they have (a second signal stops waiting). A slice taken back is made again (delete,
# create, copy, install) before training: a TPU VM found PREEMPTED or TERMINATED, or with QUEUED=1 a queued resource
# found SUSPENDING, SUSPENDED (Cloud TPU deletes a preempted spot slice's node: describe says NOT_FOUND) or FAILED,
# deleted with --force. So wrapping `run` in launch/restart.sh resumes a preempted run from its last checkpoint.
#
# DATA_SERVICE=1: the input through the tf.data service (docs/data.md, "tf.data service") on the slice's own hosts:
# `run` starts a dispatcher on worker 0 (port DATA_SERVICE_PORT, default 5050; its log ~/data_service.log) and every
# worker's script a tf.data worker beside its trainer (stopped when the trainer ends); training gets
# --config.data.service=WORKER0_IP:PORT (worker 0's internal address, from describe's networkEndpoints).
set -euo pipefail

dry_run=0
if [ "${1:-}" = "--dry_run" ]; then dry_run=1; shift; fi
step="${1:-}"
[ $# -gt 0 ] && shift
if [ "${1:-}" = "--" ]; then shift; fi
train_flags=("$@")

HERE="$(cd "$(dirname "$0")/.." && pwd)"
TPU_NAME="${TPU_NAME:-alexnet}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-0}"
QR_NAME="${TPU_NAME}-qr"
DATA_DIR="${DATA_DIR-/mnt/data/imagenet_prepared}"  # DATA_DIR= (empty): none (configs/synthetic.py)
WORKDIR="${WORKDIR:-/mnt/work/alexnet}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
REPO_DIR="alexnet_jax"                           # on each worker, under its home
REMOTE_PYTHON="${REMOTE_PYTHON:-.venv/bin/python}"  # relative to ~/${REPO_DIR}
POLL_SECS="${POLL_SECS:-30}"

error() { echo "error: $*" >&2; exit 2; }

runtime_for() {  # the TPU software version for JAX on this accelerator (cloud.google.com/tpu/docs/runtimes)
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}
if [ -z "${RUNTIME:-}" ]; then
  RUNTIME="$(runtime_for "$ACCELERATOR")" \
    || error "ACCELERATOR=${ACCELERATOR}: not a Cloud TPU type this script knows (v4-32, v5litepod-16, v5p-16, v6e-16, ...); set RUNTIME yourself"
fi

gcloud_flags=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then gcloud_flags+=(--project="$PROJECT"); fi
boolean() {  # boolean NAME VALUE WHAT: 1 or 0, or one error line and exit 2
  case "$2" in
    1 | true) echo 1 ;;
    0 | false | "") echo 0 ;;
    *) error "$1=$2: give 1 (or true) for $3, 0 (or false, the default) for none" ;;
  esac
}
SPOT="$(boolean SPOT "$SPOT" "a spot slice")" || exit 2
DATA_SERVICE="$(boolean DATA_SERVICE "${DATA_SERVICE:-0}" "the tf.data service on the slice's hosts")" || exit 2
DATA_SERVICE_PORT="${DATA_SERVICE_PORT:-5050}"
QUEUED="$(boolean QUEUED "$QUEUED" "a queued resource")" || exit 2
spot_flag=()
if [ "$SPOT" = "1" ]; then spot_flag=(--spot); fi

run() {  # print, and execute unless --dry_run
  printf '+ '
  printf '%q ' "$@"
  echo
  if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all --command="$1"
}

state() { gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" --format='value(state)' 2>/dev/null || true; }

qr_state() {  # the queued resource's state (REST v2 QueuedResourceState); empty when there is none
  gcloud compute tpus queued-resources describe "$QR_NAME" "${gcloud_flags[@]}" --format='value(state.state)' \
    2>/dev/null || true
}

num_workers() {  # the slice's hosts, as the TPU API lists them
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" --format=json \
    | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["networkEndpoints"]))'
}

create() {
  if [ "$QUEUED" = "1" ]; then
    local s=""
    if [ "$dry_run" -eq 0 ]; then s="$(qr_state)"; fi
    case "$s" in
      "") ;;
      SUSPENDING | SUSPENDED | FAILED)  # its node is gone (or never came): a new request takes its name
        echo "queued resource ${QR_NAME} is ${s}: deleting it before queueing a new one" >&2
        delete ;;
      *) echo "queued resource ${QR_NAME} exists (${s}): waiting for it" >&2 ;;
    esac
    case "$s" in
      "" | SUSPENDING | SUSPENDED | FAILED)
        run gcloud compute tpus queued-resources create "$QR_NAME" --node-id="$TPU_NAME" "${gcloud_flags[@]}" \
          --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot_flag[@]}" ;;
    esac
    [ "$dry_run" -eq 1 ] && return 0
    while true; do  # nothing can be copied to a slice that does not exist yet
      s="$(qr_state)"
      case "$s" in
        ACTIVE) echo "queued resource ${QR_NAME} is ACTIVE"; return 0 ;;
        FAILED | SUSPENDING | SUSPENDED | "")
          echo "error: queued resource ${QR_NAME} is ${s:-gone}: see gcloud compute tpus queued-resources describe ${QR_NAME}" >&2
          exit 1 ;;
      esac
      echo "queued resource ${QR_NAME}: ${s}; waiting ${POLL_SECS}s" >&2
      sleep "$POLL_SECS"
    done
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_flags[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" "${spot_flag[@]}"
  fi
}

delete() {
  if [ "$QUEUED" = "1" ]; then
    run gcloud compute tpus queued-resources delete "$QR_NAME" "${gcloud_flags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gcloud_flags[@]}" --quiet
  fi
}

copy() {  # this repository without its virtualenvs (.venv, .venv-aot: GBs), git history, caches and local runs (a
  # SLURM job's output and status files: tar fails on a file that changes while it reads it)
  local tarball
  tarball="$(mktemp -u /tmp/alexnet_jax.XXXXXX).tgz"
  run tar -C "$HERE" --exclude='./.venv*' --exclude=./.git --exclude=./.cache --exclude=./workdirs \
    --exclude=./demo_data --exclude='./slurm-*' --exclude='__pycache__' --exclude='*.egg-info' -czf "$tarball" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":/tmp/alexnet_jax.tgz "${gcloud_flags[@]}" --worker=all
  on_all_workers "mkdir -p ~/${REPO_DIR} && tar -xzf /tmp/alexnet_jax.tgz -C ~/${REPO_DIR}"
  if [ "$dry_run" -eq 0 ]; then rm -f "$tarball"; fi
}

install() {
  local mount=""
  if [ -n "${GCSFUSE_BUCKET:-}" ]; then
    mount="sudo mkdir -p ${GCSFUSE_MOUNT:-/mnt/gcs} && sudo chown \$USER ${GCSFUSE_MOUNT:-/mnt/gcs} && \
gcsfuse --implicit-dirs ${GCSFUSE_BUCKET} ${GCSFUSE_MOUNT:-/mnt/gcs} && "
  fi
  local setup="python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --python ${PYTHON_VERSION} .venv && \
~/.local/bin/uv pip install -q --python .venv/bin/python -e . 'jax[tpu]'"
  on_all_workers "${mount}cd ~/${REPO_DIR} && ${INSTALL_CMD:-$setup}"
}

worker0_ip() {  # worker 0's internal address (WORKER0_IP in a dry run)
  if [ "$dry_run" -eq 1 ]; then echo WORKER0_IP; return 0; fi
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" --format=json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["networkEndpoints"][0]["ipAddress"])'
}

service_script() {  # DATA_SERVICE=1: $1 dispatcher | worker | stop: start (in the background) or stop a server
  local server="${REMOTE_PYTHON} -m alexnet_jax.data_service"
  case "$1" in
    dispatcher) echo "cd ~/${REPO_DIR} && { [ -f dispatcher.pid ] && kill -TERM \$(cat dispatcher.pid) 2>/dev/null; \
nohup ${server} --role=dispatcher --port=${DATA_SERVICE_PORT} >> ~/data_service.log 2>&1 < /dev/null & \
echo \$! > dispatcher.pid; }" ;;
    worker) echo "${server} --role=worker --dispatcher=$2 --host=\$(hostname -I | cut -d' ' -f1) >> ~/data_service.log 2>&1 &
service_pid=\$!" ;;
    stop) echo "cd ~/${REPO_DIR} && [ -f dispatcher.pid ] && kill -TERM \$(cat dispatcher.pid) && rm -f dispatcher.pid || true" ;;
  esac
}

worker_script() {  # what each worker runs: clear what an earlier run left, then train in the foreground
  local train service_flags=() start_worker="" stop_worker=""
  if [ "$DATA_SERVICE" = "1" ]; then
    service_flags=("--config.data.service=$(worker0_ip):${DATA_SERVICE_PORT}")
    start_worker="$(service_script worker "${service_flags[0]#*=}")"
    stop_worker="kill -TERM \$service_pid 2>/dev/null"
  fi
  train="$(python3 "$HERE/launch/command.py" --python="$REMOTE_PYTHON" --workdir="$WORKDIR" --data_dir="$DATA_DIR" \
    -- "${service_flags[@]}" "${train_flags[@]}")" || exit 2
  cat <<EOF
cd ~/${REPO_DIR} || exit 2
if [ -f train.pid ] && kill -0 "\$(cat train.pid)" 2>/dev/null; then
  echo "stopping the training process \$(cat train.pid) left by an earlier run"; kill -TERM "\$(cat train.pid)"
  for _ in \$(seq 60); do kill -0 "\$(cat train.pid)" 2>/dev/null || break; sleep 1; done
  kill -KILL "\$(cat train.pid)" 2>/dev/null || true
fi
rm -f /tmp/libtpu_lockfile
echo "=== \$(date -u +%FT%TZ) worker \$(hostname)" >> ~/train.log
export PYTHONUNBUFFERED=1
${start_worker}
${train} > >(tee -a ~/train.log) 2>&1 &
echo \$! > train.pid
wait \$!
status=\$?
rm -f train.pid
${stop_worker}
exit \$status
EOF
}

remake() {  # $1: why
  echo "slice ${TPU_NAME} $1: deleting it and creating it again" >&2
  delete; create; copy; install
}

check_slice() {  # before `run`: make the slice again if it was taken back
  if [ "$QUEUED" = "1" ]; then
    local s
    s="$(qr_state)"
    case "$s" in
      "") echo "error: no queued resource ${QR_NAME} in ${ZONE}: run '$0 create' (or all) first" >&2; exit 1 ;;
      SUSPENDING | SUSPENDED | FAILED) remake "was preempted (queued resource ${QR_NAME}: ${s})"; return 0 ;;
      ACTIVE) ;;
      *) create ;;  # still queued or provisioning: wait until ACTIVE
    esac
  fi
  case "$(state)" in
    PREEMPTED | TERMINATED) remake "was preempted" ;;
    "") echo "error: no TPU ${TPU_NAME} in ${ZONE}: run '$0 create' (or all) first" >&2; exit 1 ;;
  esac
}

stop_trainers() {  # SIGTERM to every worker's trainer (its pid file): it saves and exits 75
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all \
    --command="cd ~/${REPO_DIR} && [ -f train.pid ] && kill -TERM \$(cat train.pid) || true" || true
}

train() {
  if [ "$dry_run" -eq 0 ]; then check_slice; fi
  local script n s pids=() statuses=() status=0 signalled=0
  script="$(worker_script)"
  if [ "$DATA_SERVICE" = "1" ]; then
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=0 --command="$(service_script dispatcher)"
  fi
  if [ "$dry_run" -eq 1 ]; then
    echo "+ gcloud compute tpus tpu-vm ssh ${TPU_NAME} ${gcloud_flags[*]} --worker=W --command=\"\$SCRIPT\"" \
      "(W = each worker, in parallel), SCRIPT:"
    echo "$script"
    return 0
  fi
  n="$(num_workers)"
  echo "training on ${n} worker(s) of ${TPU_NAME}; each also writes ~/train.log" >&2
  for ((w = 0; w < n; w++)); do
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker="$w" --command="$script" &
    pids+=($!)
  done
  # ssh without a terminal passes no signal on: the trainers get SIGTERM through their pid files, save and exit
  # 75, and their ssh sessions end with that status. A second signal ends the local ssh clients at once.
  # shellcheck disable=SC2329  # called by the trap
  on_signal() {
    signalled=$((signalled + 1))
    if [ "$signalled" -eq 1 ]; then
      echo "signal received: stopping the trainers on every worker (they save and exit 75); again to stop waiting" >&2
      stop_trainers
    else
      for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    fi
  }
  trap on_signal TERM INT
  local seen
  for p in "${pids[@]}"; do
    seen="$signalled"
    s=0
    wait "$p" || s=$?
    # a trapped signal interrupts wait (status 128 + signal): wait again for the ssh client's own exit status
    while [ "$s" -gt 128 ] && [ "$signalled" -ne "$seen" ]; do seen="$signalled"; s=0; wait "$p" || s=$?; done
    statuses+=("$s")
  done
  trap - TERM INT
  if [ "$DATA_SERVICE" = "1" ]; then
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=0 --command="$(service_script stop)" || true
  fi
  echo "exit statuses by worker: ${statuses[*]}" >&2
  status="$(python3 "$HERE/launch/command.py" --combine "${statuses[@]}")" || status=1
  case "$status" in
    126 | 127) echo "error: the training command could not start on a worker (status ${status}): its interpreter" \
                 "${REMOTE_PYTHON} is missing; run '$0 install' (or all) first" >&2 ;;
  esac
  exit "$status"
}

case "$step" in
  create) create ;;
  copy) copy ;;
  install) install ;;
  run) train ;;
  logs) run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=0 --command="tail -f ~/train.log" ;;
  stop) on_all_workers "cd ~/${REPO_DIR} && [ -f train.pid ] && kill -TERM \$(cat train.pid) || true" ;;  # save, 75
  delete) delete ;;
  all) create; copy; install; train ;;
  *) echo "usage: $0 [--dry_run] create|copy|install|run|logs|stop|delete|all [-- TRAINING FLAGS]" >&2; exit 2 ;;
esac
