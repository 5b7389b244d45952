#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it, copy this repository to every worker, install, run one process per
# worker (JAX finds the other workers by itself), and delete the slice.
#
#   launch/tpu_pod.sh [--dry_run] STEP [-- TRAINING FLAGS]
#   STEP: create | copy | install | run | logs | stop | delete | all (create, copy, install, run)
#
#   export TPU_NAME=alexnet ZONE=us-central2-b ACCELERATOR=v4-32 PROJECT=my-project
#   export DATA_DIR=/mnt/data/imagenet_prepared WORKDIR=/mnt/work/paper   # paths every worker sees
#   launch/tpu_pod.sh all -- --config=configs/paper.py --config.batch_size=1024
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32, v5litepod-16), RUNTIME (TPU software version),
# PROJECT, SPOT=1 (a spot slice) or QUEUED=1 (a queued resource that waits for capacity), DATA_DIR, WORKDIR.
# The data and the workdir must be visible to every worker under the same path: a Filestore (NFS) share, or a GCS
# bucket mounted with gcsfuse in the install step (GCSFUSE_BUCKET=bucket GCSFUSE_MOUNT=/mnt/gcs). Preemption (spot):
# each worker gets SIGTERM, saves the checkpoint and exits 75; `launch/tpu_pod.sh run` again resumes (or wrap the
# whole script in launch/restart.sh, which reruns it).
set -euo pipefail

dry_run=0
if [ "${1:-}" = "--dry_run" ]; then dry_run=1; shift; fi
step="${1:-}"
[ $# -gt 0 ] && shift
if [ "${1:-}" = "--" ]; then shift; fi
train_flags=("$@")

TPU_NAME="${TPU_NAME:-alexnet}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
DATA_DIR="${DATA_DIR:-/mnt/data/imagenet_prepared}"
WORKDIR="${WORKDIR:-/mnt/work/alexnet}"
REPO_DIR="alexnet_jax"
HERE="$(cd "$(dirname "$0")/.." && pwd)"

project_flag=()
if [ -n "$PROJECT" ]; then project_flag=(--project="$PROJECT"); fi

run() {  # print, and execute unless --dry_run
  printf '+ '
  printf '%q ' "$@"
  echo
  if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=all --command="$1"
}

create() {
  if [ "${QUEUED:-0}" = "1" ]; then
    run gcloud compute tpus queued-resources create "${TPU_NAME}-qr" --node-id="$TPU_NAME" --zone="$ZONE" \
      "${project_flag[@]}" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
      ${SPOT:+--spot}
    echo "queued: watch with gcloud compute tpus queued-resources describe ${TPU_NAME}-qr --zone=${ZONE}"
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
  fi
}

copy() {
  run tar -C "$HERE" --exclude=.venv --exclude=.git --exclude=workdirs --exclude=demo_data -czf /tmp/alexnet_jax.tgz .
  run gcloud compute tpus tpu-vm scp /tmp/alexnet_jax.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" "${project_flag[@]}" \
    --worker=all
  on_all_workers "mkdir -p ~/${REPO_DIR} && tar -xzf /tmp/alexnet_jax.tgz -C ~/${REPO_DIR}"
}

install() {
  local mount=""
  if [ -n "${GCSFUSE_BUCKET:-}" ]; then
    mount="sudo mkdir -p ${GCSFUSE_MOUNT:-/mnt/gcs} && sudo chown \$USER ${GCSFUSE_MOUNT:-/mnt/gcs} && \
gcsfuse --implicit-dirs ${GCSFUSE_BUCKET} ${GCSFUSE_MOUNT:-/mnt/gcs} && "
  fi
  on_all_workers "${mount}cd ~/${REPO_DIR} && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
.venv/bin/pip install -q -e . 'jax[tpu]'"
}

train() {
  local flags
  flags="$(printf '%q ' "${train_flags[@]}")"
  on_all_workers "cd ~/${REPO_DIR} && nohup .venv/bin/python -m alexnet_jax.main --workdir=${WORKDIR} \
--config.data.dir=${DATA_DIR} ${flags} > ~/train.log 2>&1 &"
  echo "started on every worker; follow with: $0 logs"
}

case "$step" in
  create) create ;;
  copy) copy ;;
  install) install ;;
  run) train ;;
  logs) run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=0 \
          --command="tail -f ~/train.log" ;;
  stop) on_all_workers "pkill -TERM -f alexnet_jax.main || true" ;;  # SIGTERM: save, then exit 75
  delete)
    if [ "${QUEUED:-0}" = "1" ]; then
      run gcloud compute tpus queued-resources delete "${TPU_NAME}-qr" --zone="$ZONE" "${project_flag[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --quiet
    fi ;;
  all) create; copy; install; train ;;
  *) echo "usage: $0 [--dry_run] create|copy|install|run|logs|stop|delete|all [-- TRAINING FLAGS]" >&2; exit 2 ;;
esac
