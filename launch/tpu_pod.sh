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
# SPOT=1 (a spot slice), QUEUED=1 (a queued resource, waited on until ACTIVE), DATA_DIR, WORKDIR, PYTHON_VERSION
# (3.12), INSTALL_CMD (what each worker runs in ~/alexnet_jax to install; default below). The data and the workdir
# must be visible to every worker under the same path: a Filestore (NFS) share, or a GCS bucket mounted with
# gcsfuse in the install step (GCSFUSE_BUCKET=bucket GCSFUSE_MOUNT=/mnt/gcs).
#
# Python: those images have Python 3.10 and this package needs 3.11+, so `install` puts uv (from PyPI) in the
# user's ~/.local and makes ~/alexnet_jax/.venv with uv's own Python ${PYTHON_VERSION}, then `jax[tpu]`.
#
# `run` trains in the foreground: one ssh per worker, each running the one training command (built by
# launch/command.py: --config first, then the kit's flags, then the rest) with its output in ~/train.log too, and
# returns when every worker has ended, with the exit code a supervisor acts on (alexnet_jax/cli.py: 0 done, 1 or 2
# an error to fix, 75 preempted or transient: rerun). Before it starts, a training process left by an earlier run
# (its pid in ~/alexnet_jax/train.pid) is stopped and libtpu's lock file /tmp/libtpu_lockfile removed. A slice found
# PREEMPTED (spot) is deleted and created again (create, copy, install) before training, so wrapping `run` in
# launch/restart.sh resumes a preempted run from its last checkpoint.
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
spot_flag=()
case "$SPOT" in
  1) spot_flag=(--spot) ;;
  0) ;;
  *) error "SPOT=${SPOT}: 1 for a spot slice, 0 (default) for an on-demand one" ;;
esac

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

num_workers() {  # the slice's hosts, as the TPU API lists them
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" --format=json \
    | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["networkEndpoints"]))'
}

create() {
  if [ "$QUEUED" = "1" ]; then
    run gcloud compute tpus queued-resources create "${TPU_NAME}-qr" --node-id="$TPU_NAME" "${gcloud_flags[@]}" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot_flag[@]}"
    [ "$dry_run" -eq 1 ] && return 0
    local s=""
    while true; do  # nothing can be copied to a slice that does not exist yet
      s="$(gcloud compute tpus queued-resources describe "${TPU_NAME}-qr" "${gcloud_flags[@]}" \
        --format='value(state.state)')"
      case "$s" in
        ACTIVE) echo "queued resource ${TPU_NAME}-qr is ACTIVE"; return 0 ;;
        FAILED | SUSPENDED) echo "error: queued resource ${TPU_NAME}-qr is ${s}: see gcloud compute tpus queued-resources describe ${TPU_NAME}-qr" >&2; exit 1 ;;
      esac
      echo "queued resource ${TPU_NAME}-qr: ${s}; waiting ${POLL_SECS}s" >&2
      sleep "$POLL_SECS"
    done
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_flags[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" "${spot_flag[@]}"
  fi
}

delete() {
  if [ "$QUEUED" = "1" ]; then
    run gcloud compute tpus queued-resources delete "${TPU_NAME}-qr" "${gcloud_flags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gcloud_flags[@]}" --quiet
  fi
}

copy() {  # this repository without its virtualenvs (.venv, .venv-aot: GBs), git history and local runs
  local tarball
  tarball="$(mktemp -u /tmp/alexnet_jax.XXXXXX).tgz"
  run tar -C "$HERE" --exclude='./.venv*' --exclude=./.git --exclude=./workdirs --exclude=./demo_data \
    --exclude='__pycache__' --exclude='*.egg-info' -czf "$tarball" .
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

worker_script() {  # what each worker runs: clear what an earlier run left, then train in the foreground
  local train
  train="$(python3 "$HERE/launch/command.py" --python="$REMOTE_PYTHON" --workdir="$WORKDIR" --data_dir="$DATA_DIR" \
    -- "${train_flags[@]}")" || exit 2
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
${train} > >(tee -a ~/train.log) 2>&1 &
echo \$! > train.pid
wait \$!
status=\$?
rm -f train.pid
exit \$status
EOF
}

train() {
  if [ "$dry_run" -eq 0 ]; then
    case "$(state)" in
      PREEMPTED | TERMINATED)
        echo "slice ${TPU_NAME} was preempted: deleting it and creating it again" >&2
        delete; create; copy; install ;;
      "") echo "error: no TPU ${TPU_NAME} in ${ZONE}: run '$0 create' (or all) first" >&2; exit 1 ;;
    esac
  fi
  local script n pids=() statuses=() status=0
  script="$(worker_script)"
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
  trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done' TERM INT
  for p in "${pids[@]}"; do
    s=0
    wait "$p" || s=$?
    statuses+=("$s")
  done
  echo "exit statuses by worker: ${statuses[*]}" >&2
  for s in "${statuses[@]}"; do  # an error to fix wins over a retry; a lost peer (134, 255: ssh) is a retry
    case "$s" in
      1 | 2) exit "$s" ;;
      0) ;;
      *) status=75 ;;
    esac
  done
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
