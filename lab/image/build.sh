#!/usr/bin/env bash
# Build the lab's images locally, without any container registry (lab/README.md, "Hosts" and
# "Registry and hub"), on the lab's (outer) engine.
#
#   gpufleet-lab/host-base:<hash>   mmdebstrap minbase + systemd + docker.io ... (packages-host.txt)
#   gpufleet-lab/runtime:<hash>      mmdebstrap minbase + python3, the base of the stand-in images
#   gpufleet-lab/registry:<hash>     mmdebstrap minbase + Debian's docker-registry (the real
#                                    distribution registry 2.8) + registry/config.yml
#   gpufleet-lab/host:<hash>         host-base + stand-in hook, NVML stand-in, nvidia-ml-py,
#                                    Compose v2 plugin, stand-in servers (host.Dockerfile)
#   gpufleet-lab/podman-base:<hash>  mmdebstrap minbase of Debian trixie + systemd + Podman with
#                                    Quadlet (packages-podman.txt)
#   gpufleet-lab/podman-host:<hash>  podman-base + stand-in CDI hook, NVML stand-in, nvidia-ml-py,
#                                    stand-in servers, rootfs-podman (podman.Dockerfile)
#   gpufleet-lab/standin:<hash>      runtime + the stand-in servers (inner/Dockerfile); the hub
#   gpufleet-lab/standin-<name>:<hash>  inner/<name>.Dockerfile on it: ollama, vllm,
#                                    docling-serve (lab/lab.py pushes them to the lab registry
#                                    under the real images' names)
#
# Each tag is a content hash of its inputs: an image whose tag exists is not rebuilt.
# The Debian mirror is the one apt already uses on this machine, read at run time.
# Prints the image tags on stdout, one KEY=VALUE a line.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LAB=$(cd "$HERE/.." && pwd)
ROOT=$(cd "$LAB/.." && pwd)
BUILD=${GPUFLEET_LAB_BUILD:-$ROOT/.build/lab}
PY=${PYTHON:-$ROOT/.venv/bin/python}
SUITE=${GPUFLEET_LAB_SUITE:-bookworm}
mkdir -p "$BUILD"

export DOCKER_HOST=${DOCKER_HOST:-$("$LAB/engine.sh" ensure)}
log() { echo "lab/image/build.sh: $*" >&2; }

hash_inputs() {  # files, directories or "text:..." strings -> one short sha256
    local f
    for f in "$@"; do
        if [[ $f == text:* ]]; then
            echo "$f"
        elif [[ -d $f ]]; then
            (cd "$f" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z \
                | xargs -0 -r sha256sum | sed "s#^#${f#"$ROOT"/} #")
        elif [[ -e $f ]]; then
            echo "${f#"$ROOT"/} $(sha256sum <"$f" | cut -d' ' -f1)"
        else
            echo "absent ${f#"$ROOT"/}"
        fi
    done | sha256sum | cut -c1-16
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

mirror_source() {
    # The sources apt uses here (deb822 or one-line); mmdebstrap pastes a file given as MIRROR.
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [[ -s $f ]] && grep -qv '^\s*#' "$f"; then
            echo "$f"
            return
        fi
    done
    log "no apt sources found in /etc/apt (debian.sources or sources.list)"
    exit 1
}

mirror_uri() {
    # The first archive URI apt uses here, for a suite other than the one it lists (trixie).
    local f uri
    f=$(mirror_source)
    uri=$(awk '/^URIs:/ {print $2; exit} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f")
    [[ -n $uri ]] || { log "no archive URI in $f"; exit 1; }
    echo "$uri"
}

packages() { grep -v '^\s*#' "$1" | grep -v '^\s*$' | paste -sd, -; }

debootstrap_import() {  # $1 package list file, $2 tag, $3 extra customize hook, $4.. docker import changes
    local list=$1 tag=$2 hook=$3
    shift 3
    local changes=()
    local c
    for c in "$@"; do changes+=(-c "$c"); done
    command -v mmdebstrap >/dev/null || { log "mmdebstrap missing: apt-get install -y mmdebstrap"; exit 1; }
    log "building $tag with mmdebstrap ($SUITE) from ${MIRROR:-$(mirror_source)}"
    # shellcheck disable=SC2016 # "$1" in a hook is the chroot, expanded by mmdebstrap
    mmdebstrap --quiet --variant=minbase --include="$(packages "$list")" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/etc/machine-id; : > "$1"/etc/machine-id' \
        --customize-hook="$hook" \
        "$SUITE" - "${MIRROR:-$(mirror_source)}" 2>"$BUILD/mmdebstrap-${tag//[:\/]/_}.log" \
        | docker import "${changes[@]}" - "$tag" >/dev/null \
        || { log "mmdebstrap failed; see $BUILD/mmdebstrap-${tag//[:\/]/_}.log"; tail -20 "$BUILD/mmdebstrap-${tag//[:\/]/_}.log" >&2; exit 1; }
}

# 1. host-base and 2. runtime (base of the inner stand-in images), built side by side ------
# Bump RECIPE when the mmdebstrap recipe above changes (the base hashes do not cover build.sh,
# so that editing step 3 does not rebuild the slow bases).
RECIPE=1
BASE_HASH=$(hash_inputs "$HERE/packages-host.txt" "text:recipe $RECIPE")
BASE_TAG=gpufleet-lab/host-base:$BASE_HASH
RT_HASH=$(hash_inputs "$HERE/packages-runtime.txt" "text:recipe $RECIPE")
RT_TAG=gpufleet-lab/runtime:$RT_HASH
REG_HASH=$(hash_inputs "$HERE/packages-registry.txt" "$HERE/registry" "text:recipe $RECIPE")
REG_TAG=gpufleet-lab/registry:$REG_HASH
PODMAN_SUITE=trixie
PB_HASH=$(hash_inputs "$HERE/packages-podman.txt" "text:recipe $RECIPE $PODMAN_SUITE")
PB_TAG=gpufleet-lab/podman-base:$PB_HASH
rt_pid=
reg_pid=
pb_pid=
if ! have_image "$RT_TAG"; then
    (
        t0=$SECONDS
        debootstrap_import "$HERE/packages-runtime.txt" "$RT_TAG" 'true' 'CMD ["/usr/bin/python3"]'
        log "built $RT_TAG in $((SECONDS - t0)) s"
    ) &
    rt_pid=$!
fi
if ! have_image "$REG_TAG"; then
    (
        t0=$SECONDS
        debootstrap_import "$HERE/packages-registry.txt" "$REG_TAG" \
            "copy-in $HERE/registry/config.yml /etc/docker/registry" \
            'CMD ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]' \
            'EXPOSE 5000' 'VOLUME ["/var/lib/docker-registry"]'
        log "built $REG_TAG in $((SECONDS - t0)) s"
    ) &
    reg_pid=$!
fi
if ! have_image "$PB_TAG"; then
    (
        t0=$SECONDS
        # shellcheck disable=SC2016 # "$1" in a hook is the chroot, expanded by mmdebstrap
        MIRROR=$(mirror_uri) SUITE=$PODMAN_SUITE debootstrap_import "$HERE/packages-podman.txt" "$PB_TAG" \
            'chroot "$1" systemctl mask getty@tty1.service console-getty.service systemd-logind.service \
                 systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
                 systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
                 e2scrub_all.timer fstrim.timer podman-auto-update.timer >/dev/null 2>&1; true' \
            'CMD ["/sbin/init"]'
        log "built $PB_TAG in $((SECONDS - t0)) s"
    ) &
    pb_pid=$!
fi
if ! have_image "$BASE_TAG"; then
    t0=$SECONDS
    # shellcheck disable=SC2016 # "$1" in a hook is the chroot, expanded by mmdebstrap
    debootstrap_import "$HERE/packages-host.txt" "$BASE_TAG" \
        'chroot "$1" systemctl enable docker.service containerd.service >/dev/null 2>&1;
         chroot "$1" systemctl mask getty@tty1.service console-getty.service systemd-logind.service \
             systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
             systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
             e2scrub_all.timer fstrim.timer >/dev/null 2>&1; true' \
        'CMD ["/sbin/init"]'
    log "built $BASE_TAG in $((SECONDS - t0)) s"
fi
if [[ -n $rt_pid ]] && ! wait "$rt_pid"; then
    log "building $RT_TAG failed"
    exit 1
fi
if [[ -n $reg_pid ]] && ! wait "$reg_pid"; then
    log "building $REG_TAG failed"
    exit 1
fi
if [[ -n $pb_pid ]] && ! wait "$pb_pid"; then
    log "building $PB_TAG failed"
    exit 1
fi

# 3. host = host-base + the lab's own files -------------------------------------------------
SITE=$("$PY" -c 'import pynvml, os; print(os.path.dirname(pynvml.__file__))')
COMPOSE_BIN=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
NVML_SRC=$LAB/nvml/libnvidia-ml.c
HOST_HASH=$(hash_inputs "$HERE/host.Dockerfile" "$HERE/rootfs" "$LAB/hook" "$LAB/servers" \
    "$LAB/nvml/build.sh" "$NVML_SRC" "$SITE/pynvml.py" "$COMPOSE_BIN" "$HERE/build.sh" "text:$BASE_TAG $RT_TAG")
HOST_TAG=gpufleet-lab/host:$HOST_HASH
if ! have_image "$HOST_TAG"; then
    t0=$SECONDS
    ctx=$BUILD/context-host
    rm -rf "$ctx"
    mkdir -p "$ctx/usr/libexec/docker/cli-plugins" "$ctx/usr/local/lib/python3.11/dist-packages" \
        "$ctx/opt/gpufleet-lab/servers" "$ctx/opt/gpufleet-lab/hook" "$ctx/opt/gpufleet-lab/nvml"
    cp -a "$HERE/rootfs/." "$ctx/"
    # Hook and NVML library wait under /opt: lab/lab.py links them in on hosts that have GPUs
    # (a CPU-only host has neither, as a real one would not).
    install -m755 "$LAB/hook/nvidia-container-runtime-hook" "$ctx/opt/gpufleet-lab/hook/"
    install -m644 "$LAB/hook/stand_in_hook.py" "$ctx/opt/gpufleet-lab/hook/"
    install -m755 "$COMPOSE_BIN" "$ctx/usr/libexec/docker/cli-plugins/docker-compose"
    cp "$SITE/pynvml.py" "$ctx/usr/local/lib/python3.11/dist-packages/"
    cp -a "$SITE"/nvidia_ml_py-*.dist-info "$ctx/usr/local/lib/python3.11/dist-packages/" 2>/dev/null || true
    cp -a "$LAB/servers/." "$ctx/opt/gpufleet-lab/servers/"
    find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
    if [[ -f $NVML_SRC ]]; then
        command -v gcc >/dev/null || { log "gcc missing: apt-get install -y gcc libc6-dev"; exit 1; }
        # Same Debian release as the image: a library built here links against the same glibc.
        sh "$LAB/nvml/build.sh" "$ctx/opt/gpufleet-lab/nvml" >&2
    else
        log "WARNING: $NVML_SRC not there yet: the host image has no NVML stand-in"
    fi
    cp "$HERE/host.Dockerfile" "$ctx/Dockerfile"
    printf 'Dockerfile\n.dockerignore\n' > "$ctx/.dockerignore"
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$BASE_TAG" --build-arg "RUNTIME_TAG=$RT_TAG" \
        -t "$HOST_TAG" "$ctx" >/dev/null 2> >(grep -v -i 'deprecated\|legacy builder\|buildx\|buildkit\|environment-variable\|^\s*$' >&2)
    log "built $HOST_TAG in $((SECONDS - t0)) s"
fi

# 3b. podman-host = podman-base + the lab's own files, as a Podman GPU box has them ----------
PH_HASH=$(hash_inputs "$HERE/podman.Dockerfile" "$HERE/rootfs" "$HERE/rootfs-podman" "$LAB/hook" \
    "$LAB/servers" "$LAB/nvml/build.sh" "$NVML_SRC" "$SITE/pynvml.py" "$HERE/build.sh" \
    "text:$PB_TAG $RT_TAG")
PH_TAG=gpufleet-lab/podman-host:$PH_HASH
if ! have_image "$PH_TAG"; then
    t0=$SECONDS
    ctx=$BUILD/context-podman-host
    rm -rf "$ctx"
    mkdir -p "$ctx/usr/lib/python3/dist-packages" "$ctx/opt/gpufleet-lab/servers" \
        "$ctx/opt/gpufleet-lab/hook" "$ctx/opt/gpufleet-lab/nvml" "$ctx/etc/systemd"
    # The systemd settings and the relay of every lab host; no Docker engine here.
    cp -a "$HERE/rootfs/etc/systemd/." "$ctx/etc/systemd/"
    rm -rf "$ctx/etc/systemd/system/docker.service.d"
    cp -a "$HERE/rootfs-podman/." "$ctx/"
    # The CDI hook (and NVML library) wait under /opt: lab/lab.py links the hook in and
    # writes /etc/cdi/nvidia.yaml on hosts that have GPUs.
    install -m755 "$LAB/hook/nvidia-cdi-hook" "$ctx/opt/gpufleet-lab/hook/"
    install -m644 "$LAB/hook/cdi_hook.py" "$LAB/hook/stand_in_hook.py" "$ctx/opt/gpufleet-lab/hook/"
    cp "$SITE/pynvml.py" "$ctx/usr/lib/python3/dist-packages/"
    cp -a "$LAB/servers/." "$ctx/opt/gpufleet-lab/servers/"
    find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
    if [[ -f $NVML_SRC ]]; then
        sh "$LAB/nvml/build.sh" "$ctx/opt/gpufleet-lab/nvml" >&2
    fi
    cp "$HERE/podman.Dockerfile" "$ctx/Dockerfile"
    printf 'Dockerfile\n.dockerignore\n' > "$ctx/.dockerignore"
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$PB_TAG" --build-arg "RUNTIME_TAG=$RT_TAG" \
        -t "$PH_TAG" "$ctx" >/dev/null 2> >(grep -v -i 'deprecated\|legacy builder\|buildx\|buildkit\|environment-variable\|^\s*$' >&2)
    log "built $PH_TAG in $((SECONDS - t0)) s"
fi

# 4. the stand-in server images, on this (outer) engine: lab/lab.py pushes them to the lab
# registry; the hosts pull them from there ----------------------------------------------------
SI_HASH=$(hash_inputs "$HERE/inner" "$LAB/servers" "$SITE/pynvml.py" "text:$RT_TAG")
SI_TAG=gpufleet-lab/standin:$SI_HASH
flavors=()
for f in "$HERE"/inner/*.Dockerfile; do
    flavors+=("$(basename "$f" .Dockerfile)")
done
build_quiet() {  # docker build args...; only real errors on stderr
    DOCKER_BUILDKIT=0 docker build --quiet "$@" >/dev/null \
        2> >(grep -v -i 'deprecated\|legacy builder\|buildx\|buildkit\|environment-variable\|^\s*$' >&2)
}
if ! have_image "$SI_TAG"; then
    t0=$SECONDS
    ctx=$BUILD/context-standin
    rm -rf "$ctx"
    mkdir -p "$ctx/servers" "$ctx/inner"
    cp -a "$LAB/servers/." "$ctx/servers/"
    cp "$SITE/pynvml.py" "$ctx/inner/"
    find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
    cp "$HERE/inner/Dockerfile" "$ctx/Dockerfile"
    build_quiet --build-arg "RUNTIME=$RT_TAG" -t "$SI_TAG" "$ctx"
    log "built $SI_TAG in $((SECONDS - t0)) s"
fi
for flavor in "${flavors[@]}"; do
    if ! have_image "gpufleet-lab/standin-$flavor:$SI_HASH"; then
        build_quiet --build-arg "STANDIN=$SI_TAG" -t "gpufleet-lab/standin-$flavor:$SI_HASH" \
            - <"$HERE/inner/$flavor.Dockerfile"
    fi
done

# Older builds of our own repositories only (gpufleet-lab/*): keep the disk tidy.
keep=("gpufleet-lab/host-base:$BASE_HASH" "gpufleet-lab/runtime:$RT_HASH" "gpufleet-lab/host:$HOST_HASH"
      "gpufleet-lab/registry:$REG_HASH" "gpufleet-lab/standin:$SI_HASH"
      "gpufleet-lab/podman-base:$PB_HASH" "gpufleet-lab/podman-host:$PH_HASH")
for flavor in "${flavors[@]}"; do
    keep+=("gpufleet-lab/standin-$flavor:$SI_HASH")
done
for repo_tag in "${keep[@]}"; do
    repo=${repo_tag%%:*}
    docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}' | grep -vx "$repo_tag" \
        | xargs -r docker rmi >/dev/null 2>&1 || true
done
find "$BUILD" -maxdepth 1 -name 'runtime-*.tar' -delete

echo "HOST_IMAGE=$HOST_TAG"
echo "PODMAN_HOST_IMAGE=$PH_TAG"
echo "RUNTIME_IMAGE=$RT_TAG"
echo "REGISTRY_IMAGE=$REG_TAG"
echo "STANDIN_IMAGE=$SI_TAG"
for flavor in "${flavors[@]}"; do
    echo "STANDIN_$flavor=gpufleet-lab/standin-$flavor:$SI_HASH"
done
