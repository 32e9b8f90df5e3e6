#!/usr/bin/env bash
# Runs a built image the way a pod runs it, before CI pushes it (docs/ci-cd.md, "The smoke test"):
#
#   scripts/smoke_image.sh [--port 9527] [--wait 300] [--gpus all] IMAGE:TAG
#   make smoke-image IMAGE=... TAG=...                  (the same, with SMOKE_PORT, SMOKE_WAIT, SMOKE_ARGS)
#
# The image must be in the local Docker (`make build`, or CI's build with load: true). What it checks:
#
#   image for the CPU (no MT_DEVICE=cuda in the image), or any image given --gpus:
#     start it as the pod runs it (read-only root, a 64 MiB /tmp, no capabilities, no new privileges, the
#     image's own user), port 9527 on 127.0.0.1:PORT only; wait for /readyz 200, at most --wait seconds (a
#     container that stops ends the wait at once); scripts/health_check.py: one real translation and
#     /languages; the image's own HEALTHCHECK turns healthy; `docker stop` drains it and it exits 0.
#   image built for CUDA (the gpu target sets MT_DEVICE=cuda), no --gpus, as on a hosted CI runner:
#     1. as built it must refuse to start: exit status 2 and "no CUDA device" in its log, before loading the
#        model (service/engine.py resolve_device: asked for cuda, it fails fast instead of serving slowly on
#        the CPU);
#     2. with MT_DEVICE=cpu MT_COMPUTE_TYPE=int8 (CTranslate2 converts the float16 weights as it loads them)
#        the same checks as a CPU image: the image's Python, the wheel and the model directory work; only
#        CUDA itself is left for a machine with a GPU (--gpus all).
#
# On a failure the container's log is printed; every container this script started is removed when it ends,
# however it ends. Exit status: 0 all passed, 1 a check failed, 2 bad usage or no such image.
# Environment: DOCKER (default docker), PYTHON (default python3; the health check needs the standard library
# only). Needs curl.
set -euo pipefail

DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONTAINER_PORT=9527
PORT=9527
WAIT=300
GPUS=""
# Bounds of the other waits, in seconds: a GPU image without a GPU exits before it loads the model; the
# HEALTHCHECK runs every HEALTH_INTERVAL here (its command is the image's, only the interval is shortened);
# a stop drains for up to MT_DRAIN_SECONDS (30 s by default). SMOKE_POLL_SECONDS: the pause between polls.
EXIT_WAIT=${SMOKE_EXIT_WAIT:-120}
HEALTH_INTERVAL=3s
HEALTH_WAIT=${SMOKE_HEALTH_WAIT:-60}
STOP_TIMEOUT=60
POLL=${SMOKE_POLL_SECONDS:-2}
NO_GPU_MESSAGE="no CUDA device"

usage() {
    echo "usage: $0 [--port PORT] [--wait SECONDS] [--gpus GPUS] IMAGE:TAG" >&2
    exit 2
}

IMAGE=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --port) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; PORT=$2; shift 2 ;;
        --wait) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; WAIT=$2; shift 2 ;;
        --gpus) [[ $# -ge 2 && -n $2 ]] || usage; GPUS=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) usage ;;
        *) [[ -z $IMAGE ]] || usage; IMAGE=$1; shift ;;
    esac
done
[[ -n $IMAGE ]] || usage
command -v curl >/dev/null || { echo "smoke: needs curl" >&2; exit 2; }

URL="http://127.0.0.1:${PORT}"
CONTAINERS=()
FAILED_CONTAINER=""

say() { echo "smoke: $*"; }

fail() {  # fail CONTAINER MESSAGE: the log of CONTAINER is printed on the way out
    FAILED_CONTAINER=$1
    echo "smoke: FAIL $2" >&2
    exit 1
}

cleanup() {
    local status=$?
    if [[ -n $FAILED_CONTAINER ]]; then
        echo "---- docker logs $FAILED_CONTAINER (last 300 lines) ----" >&2
        "$DOCKER" logs --tail 300 "$FAILED_CONTAINER" >&2 2>&1 || true
        echo "---- end of docker logs ----" >&2
    fi
    for container in ${CONTAINERS[@]+"${CONTAINERS[@]}"}; do
        "$DOCKER" rm --force --volumes "$container" >/dev/null 2>&1 || echo "smoke: could not remove container $container" >&2
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME [docker run options...]: starts the image detached; sets CONTAINER (its name)
start() {
    local name=$1
    shift
    say "start $IMAGE as $name ($URL -> container port $CONTAINER_PORT)${*:+ with $*}"
    CONTAINERS+=("$name")  # before `docker run`: a run that fails to start may still leave the container
    # As the pod runs it (k8s/base/deployment.yaml): read-only root, /tmp the only writable path, no
    # capabilities, no privilege escalation, the image's non-root user. The port on loopback only.
    local id
    id=$("$DOCKER" run --detach --name "$name" --label smoke-image=1 \
        --read-only --tmpfs /tmp:rw,size=64m --cap-drop ALL --security-opt no-new-privileges \
        --health-interval "$HEALTH_INTERVAL" \
        --publish "127.0.0.1:${PORT}:${CONTAINER_PORT}" \
        ${GPUS:+--gpus "$GPUS"} "$@" "$IMAGE") || { echo "smoke: FAIL docker run $IMAGE failed (is port $PORT free?)" >&2; exit 1; }
    say "  container ${id:0:12}"
    CONTAINER=$name
}

state() {  # "running 0", "exited 2", ...
    "$DOCKER" inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$1"
}

wait_until_ready() {
    local container=$1 deadline=$((SECONDS + WAIT)) code last=""
    say "wait for $URL/readyz (up to ${WAIT}s)"
    while true; do
        local now
        now=$(state "$container") || fail "$container" "docker inspect $container failed"
        [[ $now == running* ]] || fail "$container" "the container stopped before it was ready (status, exit code: $now)"
        code=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 "$URL/readyz" || true)
        [[ $code == 200 ]] && { say "ready after $((SECONDS - deadline + WAIT))s"; return 0; }
        [[ $code == "$last" ]] || say "  /readyz: ${code/#000/no answer}"
        last=$code
        ((SECONDS < deadline)) || fail "$container" "/readyz not 200 after ${WAIT}s (last: ${code/#000/no answer})"
        sleep "$POLL"
    done
}

health_check() {
    say "health check: a real translation and /languages (scripts/health_check.py)"
    "$PYTHON" "$ROOT/scripts/health_check.py" "$URL" --wait 60 || fail "$1" "scripts/health_check.py $URL failed"
}

wait_until_healthy() {  # the image's own HEALTHCHECK (what docker compose and `docker ps` report)
    local container=$1 deadline=$((SECONDS + HEALTH_WAIT)) health
    while true; do
        health=$("$DOCKER" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$container") \
            || fail "$container" "docker inspect $container failed"
        case $health in
            healthy) say "the image's HEALTHCHECK reports healthy"; return 0 ;;
            none) fail "$container" "the image has no HEALTHCHECK" ;;
            unhealthy) fail "$container" "the image's HEALTHCHECK reports unhealthy" ;;
        esac
        ((SECONDS < deadline)) || fail "$container" "the image's HEALTHCHECK still '$health' after ${HEALTH_WAIT}s"
        sleep "$POLL"
    done
}

stop_cleanly() {  # SIGTERM: the service drains and exits 0 (service/__main__.py GracefulServer)
    local container=$1 now
    say "stop (SIGTERM, up to ${STOP_TIMEOUT}s to drain)"
    "$DOCKER" stop --timeout "$STOP_TIMEOUT" "$container" >/dev/null || fail "$container" "docker stop failed"
    now=$(state "$container") || fail "$container" "docker inspect $container failed"
    [[ $now == "exited 0" ]] || fail "$container" "after SIGTERM the container should exit 0, got (status, exit code): $now"
    say "stopped cleanly (exit 0)"
}

serves() {  # serves NAME [docker run options...]: the whole check of a serving image
    start "$@"
    local container=$CONTAINER
    wait_until_ready "$container"
    health_check "$container"
    wait_until_healthy "$container"
    stop_cleanly "$container"
}

refuses_without_gpu() {  # the GPU image as built, on a machine without a GPU
    start "$1"
    local container=$CONTAINER deadline=$((SECONDS + EXIT_WAIT)) now
    say "expect it to exit with status 2 and \"$NO_GPU_MESSAGE\" (up to ${EXIT_WAIT}s)"
    while true; do
        now=$(state "$container") || fail "$container" "docker inspect $container failed"
        [[ $now == running* || $now == created* ]] || break
        ((SECONDS < deadline)) || fail "$container" "a GPU image without a GPU should refuse to start; still running after ${EXIT_WAIT}s"
        sleep "$POLL"
    done
    [[ $now == "exited 2" ]] || fail "$container" "expected exit status 2 without a GPU, got (status, exit code): $now"
    local log
    log=$("$DOCKER" logs "$container" 2>&1) || fail "$container" "docker logs $container failed"
    [[ $log == *"$NO_GPU_MESSAGE"* ]] || fail "$container" "exited 2, but its log does not say \"$NO_GPU_MESSAGE\""
    say "refused to start without a GPU, as designed (exit 2: $NO_GPU_MESSAGE)"
}

# --- main ----------------------------------------------------------------------------------------------
"$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" >/dev/null 2>&1 \
    || { echo "smoke: no image $IMAGE in the local Docker: build it first (make build / make build-gpu) or pull it" >&2; exit 2; }
say "image $IMAGE ($("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE"))"
DEVICE=$("$DOCKER" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n 's/^MT_DEVICE=//p' | tail -n 1)
NAME="smoke-image-$$"

if [[ $DEVICE == cuda && -z $GPUS ]]; then
    say "built for CUDA (MT_DEVICE=cuda) and no --gpus: expect a refusal, then serve it on the CPU"
    refuses_without_gpu "$NAME-nogpu"
    serves "$NAME-cpu" --env MT_DEVICE=cpu --env MT_COMPUTE_TYPE=int8
else
    serves "$NAME"
fi
say "PASS $IMAGE"
