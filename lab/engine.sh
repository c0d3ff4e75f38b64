#!/usr/bin/env bash
# The outer Docker engine the lab's simulated hosts run on.
#
#   lab/engine.sh ensure   print the DOCKER_HOST to use (start our own engine only if needed;
#                          never with GPUFLEET_LAB_NO_START=1: exit 3 instead)
#   lab/engine.sh stop     stop the engine this script started (by its recorded PID), nothing else
#   lab/engine.sh status   say which engine the lab uses
#
# Policy (lab/README.md, "The outer engine"):
# 1. GPUFLEET_LAB_DOCKER_HOST set: use it as is.
# 2. An engine already answers on DOCKER_HOST or the default socket: use it, never restart or
#    reconfigure it.
# 3. Otherwise start a private dockerd instance with its own socket, pidfile, data-root and
#    exec-root under /run/gpufleet-lab and /var/lib/gpufleet-lab, no default bridge and no
#    iptables rules (the hosts need no network), so it never collides with a system engine
#    that is started later. Its PID is recorded; `stop` ends only that PID.
set -euo pipefail

RUN_DIR=${GPUFLEET_LAB_RUN_DIR:-/run/gpufleet-lab}
DATA_DIR=${GPUFLEET_LAB_DATA_DIR:-/var/lib/gpufleet-lab}
OWN_SOCK="$RUN_DIR/docker.sock"
OWN_HOST="unix://$OWN_SOCK"
PIDFILE="$RUN_DIR/dockerd.pid"
LOG="$RUN_DIR/dockerd.log"

answers() {  # $1: DOCKER_HOST value ("" = the CLI's default)
    DOCKER_HOST="$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

own_running() {
    [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start_own() {
    if ! command -v dockerd >/dev/null 2>&1; then
        if [[ ${GPUFLEET_LAB_INSTALL:-1} == 1 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "lab/engine.sh: installing docker.io from Debian" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2
        else
            echo "lab/engine.sh: no Docker engine answers and dockerd is not installed" >&2
            exit 1
        fi
    fi
    mkdir -p "$RUN_DIR" "$DATA_DIR/docker" "$RUN_DIR/exec"
    echo "lab/engine.sh: starting a private dockerd on $OWN_HOST" >&2
    # setsid: the engine outlives the make/pytest process that started it.
    setsid dockerd \
        --host "$OWN_HOST" \
        --pidfile "$PIDFILE" \
        --data-root "$DATA_DIR/docker" \
        --exec-root "$RUN_DIR/exec" \
        --bridge none \
        --iptables=false \
        --ip-masq=false \
        >"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        if answers "$OWN_HOST"; then
            return 0
        fi
        sleep 0.2
    done
    echo "lab/engine.sh: the private dockerd did not answer within 20 s; see $LOG" >&2
    tail -20 "$LOG" >&2 || true
    exit 1
}

ensure() {
    if [[ -n ${GPUFLEET_LAB_DOCKER_HOST:-} ]]; then
        echo "$GPUFLEET_LAB_DOCKER_HOST"
        return
    fi
    if own_running && answers "$OWN_HOST"; then
        echo "$OWN_HOST"
        return
    fi
    if answers "${DOCKER_HOST:-}"; then
        # Somebody else's engine: use it, do not touch it.
        echo "${DOCKER_HOST:-unix:///var/run/docker.sock}"
        return
    fi
    if [[ ${GPUFLEET_LAB_NO_START:-0} == 1 ]]; then
        echo "lab/engine.sh: no Docker engine answers (and GPUFLEET_LAB_NO_START=1)" >&2
        exit 3
    fi
    start_own
    echo "$OWN_HOST"
}

stop() {
    if own_running; then
        local pid
        pid=$(cat "$PIDFILE")
        echo "lab/engine.sh: stopping the private dockerd (PID $pid)" >&2
        kill -TERM "$pid"
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.2
        done
        echo "lab/engine.sh: dockerd PID $pid still running after 30 s" >&2
        exit 1
    fi
    echo "lab/engine.sh: no private dockerd of ours is running; nothing to stop" >&2
}

status() {
    if own_running; then
        echo "private dockerd PID $(cat "$PIDFILE") on $OWN_HOST (data-root $DATA_DIR/docker)"
    elif answers "${DOCKER_HOST:-}"; then
        echo "existing engine on ${DOCKER_HOST:-unix:///var/run/docker.sock} (used as is, never restarted)"
    else
        echo "no engine (lab/engine.sh ensure starts a private one)"
    fi
}

case ${1:-ensure} in
    ensure) ensure ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 ensure|stop|status" >&2; exit 2 ;;
esac
