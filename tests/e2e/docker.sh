#!/usr/bin/env bash
# End-to-end test of the Docker deployment: `docker compose up` on the CPU variant, compared pixel
# for pixel with `make run`. .ci/run calls it with REQUIRE_DOCKER=1; by hand (Debian, as root):
#
#   bash tests/e2e/docker.sh
#
#  1. Installs the Debian packages docker.io and docker-compose when missing and starts dockerd when
#     no daemon answers (overlay2, then vfs where overlay cannot be mounted).
#  2. Builds a local base image without any image registry: debootstrap a minimal Debian with
#     python3, venv and pip from this machine's own apt mirror (cached as a tarball under
#     ~/.cache/restore-e2e, so later runs skip it), adds this machine's CA bundle so pip inside the
#     build trusts the same certificates as the host, and `docker import`s it.
#  3. Builds the project's GPU image and its CPU image (DEVICE=cpu) with --build-arg
#     BASE_IMAGE=<that image>, checks them (non-root, no compilers or dev packages, the `restore`
#     command; GPU: CUDA provider present and its libraries resolvable, RESTORE_DEVICE=cuda refused
#     without a GPU; CPU: no NVIDIA wheel and under 1 GB), runs docker-compose.cpu.yml with `compose up -d`,
#     waits until the container is healthy, and POSTs a generated PNG to each of /denoise, /edges,
#     /derain that the service offers (tests/e2e/check_endpoints.py): status, content type, size,
#     and pixels identical to the same request served by `make run` on the host.
#  4. Prints the container logs on failure; always runs `compose down`.
#
# Without a Docker daemon (no root, no packages, dockerd cannot start) it says why and exits 0, or 1
# when REQUIRE_DOCKER=1. Any other failure exits 1.
#
# Environment (all optional):
#   REQUIRE_DOCKER=1         fail, rather than skip, when no Docker daemon can be had
#   E2E_THREADS=1            RESTORE_INTRA_OP_THREADS for both servers (same value: same arithmetic)
#   E2E_KEEP_DOCKERD=1       leave a dockerd started by this script running
#   DOCKERD_STORAGE_DRIVER   storage driver(s) to try when starting dockerd (default: overlay2 vfs)
#   E2E_CACHE_DIR            cache folder (default: ${XDG_CACHE_HOME:-~/.cache}/restore-e2e)
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
T0=$SECONDS
REQUIRE_DOCKER=${REQUIRE_DOCKER:-0}
CACHE_DIR=${E2E_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/restore-e2e}
THREADS=${E2E_THREADS:-1}
PROJECT=restore-e2e
IMAGE=restore:e2e
IMAGE_CPU=restore:e2e-cpu
CPU_IMAGE_MAX_BYTES=1000000000
INCLUDE=python3,python3-venv,python3-pip,ca-certificates
WORK=$(mktemp -d "${TMPDIR:-/tmp}/restore-e2e.XXXXXX")

COMPOSE=()
STARTED_DOCKERD=
HOST_PID=
COMPOSE_USED=
SKIPPED=
PHASES=()
PHASE_T=$SECONDS

log() { printf '[e2e %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { log "FAIL: $*"; exit 1; }
phase_done() { PHASES+=("$1 $((SECONDS - PHASE_T))s"); PHASE_T=$SECONDS; }

no_docker() {
    log "no Docker daemon: $*"
    if [ "$REQUIRE_DOCKER" = 1 ]; then
        log "FAIL: REQUIRE_DOCKER=1 and Docker is not available"
        exit 1
    fi
    log "SKIPPED (set REQUIRE_DOCKER=1 to make this an error)"
    SKIPPED=1
    exit 0
}

compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO/docker-compose.cpu.yml" "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - ERR
    if [ -n "$COMPOSE_USED" ]; then
        if [ "$rc" != 0 ]; then
            log "container logs:"
            compose logs --no-color --tail=200 2>&1 | sed 's/^/    /'
            if [ -n "$HOST_PID" ] && [ -f "$WORK/host.log" ]; then
                log "make run log (last 40 lines):"
                tail -n 40 "$WORK/host.log" | sed 's/^/    /'
            fi
        fi
        log "compose down"
        compose down --remove-orphans 2>&1 | sed 's/^/    /'
    fi
    if [ -n "$HOST_PID" ]; then
        kill -TERM -- "-$HOST_PID" 2>/dev/null
        wait "$HOST_PID" 2>/dev/null
    fi
    if [ -n "$STARTED_DOCKERD" ] && [ "${E2E_KEEP_DOCKERD:-0}" != 1 ]; then
        log "stopping the dockerd this script started (pid $STARTED_DOCKERD)"
        kill -TERM "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
    fi
    umount_under "$WORK"
    rm -rf "$WORK"
    if [ ${#PHASES[@]} -gt 0 ]; then log "phases: ${PHASES[*]}"; fi
    local result=passed
    if [ "$rc" != 0 ]; then result=FAILED; elif [ -n "$SKIPPED" ]; then result=skipped; fi
    log "docker e2e $result in $((SECONDS - T0))s"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "error at line $LINENO: $BASH_COMMAND"' ERR

umount_under() {  # anything debootstrap left mounted below $1 (it mounts /proc and /sys in the chroot)
    [ -r /proc/mounts ] || return 0
    awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    return 0
}

is_root() { [ "$(id -u)" = 0 ]; }

docker_answers() { docker info >/dev/null 2>&1; }

wait_for_docker() {  # $1: seconds, $2: pid of the dockerd to watch (optional)
    for _ in $(seq $(($1 * 2))); do
        docker_answers && return 0
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 0.5
    done
    return 1
}

# --- 1. Docker packages and daemon ------------------------------------------------------------
log "1/4 Docker packages and daemon"
missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v dockerd >/dev/null 2>&1 || docker_answers || missing+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
fi
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    is_root || no_docker "missing Debian packages ${missing[*]} and not root to install them"
    command -v apt-get >/dev/null 2>&1 || no_docker "missing ${missing[*]} and no apt-get"
    log "installing ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >"$WORK/apt.log" 2>&1 || { tail -n 20 "$WORK/apt.log"; no_docker "apt-get install ${missing[*]} failed"; }
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi

if ! docker_answers; then
    is_root || no_docker "no daemon answers and not root to start one"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        log "starting docker.service"
        if systemctl start docker >/dev/null 2>&1; then wait_for_docker 60 || true; fi
    fi
    if ! docker_answers; then
        mkdir -p "$CACHE_DIR"
        for driver in ${DOCKERD_STORAGE_DRIVER:-overlay2 vfs}; do
            log "starting dockerd --storage-driver $driver (log: $CACHE_DIR/dockerd.log)"
            dockerd --storage-driver "$driver" >"$CACHE_DIR/dockerd.log" 2>&1 &
            pid=$!
            if wait_for_docker 60 "$pid"; then
                STARTED_DOCKERD=$pid
                break
            fi
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            log "dockerd with $driver did not come up:"
            grep -E 'level=(error|fatal)|^failed to start daemon' "$CACHE_DIR/dockerd.log" | tail -n 5 | sed 's/^/    /' || true
        done
    fi
    docker_answers || no_docker "dockerd could not be started (see $CACHE_DIR/dockerd.log)"
fi
log "docker $(docker version --format '{{.Client.Version}} client, {{.Server.Version}} server' 2>/dev/null)," \
    "storage driver $(docker info --format '{{.Driver}}'), compose: $("${COMPOSE[@]}" version --short 2>/dev/null || echo '?') (${COMPOSE[*]})"
phase_done docker

# --- 2. Local base image: debootstrap + the host's CA bundle + docker import --------------------
log "2/4 base image"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
arch=$(dpkg --print-architecture)
[ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
apt_mirror() {  # the archive this machine's apt uses for its own release (never a hard-coded host)
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
        | awk -v c="$codename" '$1 == c {print $2; exit}'
}
mirror=$(apt_mirror)
if [ -z "$mirror" ]; then apt-get update -qq >/dev/null 2>&1 || true; mirror=$(apt_mirror); fi
[ -n "$mirror" ] || die "no apt source for $codename found (apt-get indextargets)"
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca_bundle" ] || die "no CA bundle at $ca_bundle"

key=$(printf '%s\n' "$codename" "$arch" "$mirror" "$INCLUDE" minbase | sha256sum | cut -c1-12)
tarball="$CACHE_DIR/rootfs-$codename-$arch-$key.tar"
base_tag="restore-e2e-base:$codename-$key-$(sha256sum <"$ca_bundle" | cut -c1-8)"
mkdir -p "$CACHE_DIR"
if docker image inspect "$base_tag" >/dev/null 2>&1; then
    log "base image $base_tag present"
else
    if [ -s "$tarball" ]; then
        log "cached rootfs $tarball ($(du -h "$tarball" | cut -f1))"
    else
        command -v debootstrap >/dev/null 2>&1 || {
            log "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >"$WORK/apt.log" 2>&1 \
                || { tail -n 20 "$WORK/apt.log"; die "apt-get install debootstrap failed"; }
        }
        log "debootstrap $codename ($arch, minbase + $INCLUDE) from $mirror"
        rootfs="$WORK/rootfs"
        if ! debootstrap --variant=minbase --arch="$arch" --include="$INCLUDE" "$codename" "$rootfs" "$mirror" \
            >"$WORK/debootstrap.log" 2>&1; then
            tail -n 30 "$WORK/debootstrap.log"
            die "debootstrap failed"
        fi
        umount_under "$rootfs"
        rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/dev/* \
            "${rootfs:?}"/tmp/* "${rootfs:?}"/var/log/bootstrap.log "${rootfs:?}"/debootstrap
        tar --numeric-owner -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
        log "cached rootfs $tarball ($(du -h "$tarball" | cut -f1))"
    fi
    mkdir -p "$WORK/ca/etc/ssl/certs"
    cp "$ca_bundle" "$WORK/ca/etc/ssl/certs/ca-certificates.crt"
    cp "$tarball" "$WORK/base.tar"
    tar --delete -f "$WORK/base.tar" ./etc/ssl/certs/ca-certificates.crt 2>/dev/null || true  # docker import refuses duplicates
    tar --numeric-owner --owner=0 --group=0 -C "$WORK/ca" -rf "$WORK/base.tar" ./etc/ssl/certs/ca-certificates.crt
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        "$WORK/base.tar" "$base_tag" >/dev/null
    rm -f "$WORK/base.tar"
    log "imported $base_tag"
fi
phase_done base

# --- 3. Project image, image checks, compose up, requests ---------------------------------------
log "3/4 project image"
build_args=(--build-arg "BASE_IMAGE=$base_tag")
index_url=${PIP_INDEX_URL:-}
if [ -z "$index_url" ] && [ -x "$REPO/.venv/bin/pip" ]; then
    index_url=$("$REPO/.venv/bin/pip" config get global.index-url 2>/dev/null || true)
fi
case "$index_url" in http://* | https://*) build_args+=(--build-arg "PIP_INDEX_URL=$index_url") ;; esac
for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    if [ -n "${!v:-}" ]; then build_args+=(--build-arg "$v"); fi
done
if ! docker build "${build_args[@]}" --label restore-e2e=1 -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log"
    die "docker build failed"
fi
if ! docker build "${build_args[@]}" --build-arg DEVICE=cpu --label restore-e2e=1 -t "$IMAGE_CPU" "$REPO" >"$WORK/build-cpu.log" 2>&1; then
    tail -n 60 "$WORK/build-cpu.log"
    die "docker build (DEVICE=cpu) failed"
fi
# One line per filesystem step (FROM/RUN/COPY), marked when it came from the layer cache.
awk '/^Sending build context/ {print; next}
     /^Step [0-9]+\/[0-9]+ : / {if (step != "") print step; step = ""; if ($4 ~ /^(FROM|RUN|COPY)$/) step = substr($0, 1, 110)}
     /^ ---> Using cache/ {if (step != "") step = step "  [cached]"}
     END {if (step != "") print step}' "$WORK/build.log" | sed 's/^/    /'
log "built $IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
cpu_bytes=$(docker image inspect --format '{{.Size}}' "$IMAGE_CPU")
log "built $IMAGE_CPU: $(awk -v b="$cpu_bytes" 'BEGIN {printf "%.2f GB", b / 1e9}')"
[ "$cpu_bytes" -lt "$CPU_IMAGE_MAX_BYTES" ] || die "the CPU image is $cpu_bytes bytes, over $CPU_IMAGE_MAX_BYTES"
# Old builds of this image become dangling; drop them (only those this script labelled).
docker image prune -f --filter label=restore-e2e=1 >/dev/null 2>&1 || true
phase_done build

log "image checks"
docker run --rm -i --network none -e IMAGE_DEVICE=gpu --entrypoint python3 "$IMAGE" - <"$REPO/tests/e2e/image_check.py" || die "image checks failed"
docker run --rm -i --network none -e IMAGE_DEVICE=cpu --entrypoint python3 "$IMAGE_CPU" - <"$REPO/tests/e2e/image_check.py" || die "CPU image checks failed"
refusal_rc=0
refusal=$(trap - ERR; docker run --rm --network none -e RESTORE_DEVICE=cuda "$IMAGE" 2>&1) || refusal_rc=$?
log "RESTORE_DEVICE=cuda without a GPU: exit $refusal_rc: $(tail -n 1 <<<"$refusal")"
if [ "$refusal_rc" != 1 ] || ! grep -q '^restore: cannot start: ' <<<"$refusal"; then
    die "the container did not refuse RESTORE_DEVICE=cuda without a GPU"
fi
phase_done checks

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cport=$(free_port)
hport=$(free_port)
[ "$cport" != "$hport" ] || hport=$(free_port)

log "compose up -d (docker-compose.cpu.yml, published on port $cport); make run on port $hport"
export RESTORE_IMAGE=$IMAGE_CPU RESTORE_HOST_PORT=$cport RESTORE_INTRA_OP_THREADS=$THREADS
COMPOSE_USED=1
compose up -d --no-build 2>&1 | sed 's/^/    /'
cid=$(compose ps -q restore)
[ -n "$cid" ] || die "compose started no container"

# The host server, in its own process group so that cleanup stops make and python together.
setsid env PORT="$hport" RESTORE_DEVICE=cpu make run >"$WORK/host.log" 2>&1 &
HOST_PID=$!

state=
for _ in $(seq 300); do
    state=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.RestartCount}}' "$cid")
    case "$state" in
        "running healthy "*) break ;;
        exited* | dead* | restarting* | *" "[1-9]*) die "container is not running: $state" ;;
    esac
    sleep 1
done
[[ "$state" == "running healthy "* ]] || die "container not healthy after 300 s: $state"
log "container healthy ($state)"

ready=
for _ in $(seq 600); do
    if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$hport/readyz', timeout=2)" 2>/dev/null; then ready=1; break; fi
    kill -0 "$HOST_PID" 2>/dev/null || { tail -n 30 "$WORK/host.log"; die "make run exited"; }
    sleep 1
done
[ -n "$ready" ] || { tail -n 30 "$WORK/host.log"; die "make run not ready after 600 s"; }
log "make run ready"
# Every service setting should be configurable through the compose file (RESTORE_SERVE_* size Ray
# Serve replicas and mean nothing to a container).
unlisted=$("$REPO/.venv/bin/python" -c 'import sys; from restore.service.settings import Settings; print(" ".join(sorted("RESTORE_" + f.upper() for f in Settings.model_fields if f != "models_dir" and not f.startswith("serve_"))))' 2>/dev/null \
    | tr ' ' '\n' | while read -r var; do [ -z "$var" ] || grep -q "^ *$var:" "$REPO/docker-compose.cpu.yml" || echo "$var"; done || true)
[ -z "$unlisted" ] || log "WARNING: settings not passed through by docker-compose.cpu.yml: $(tr '\n' ' ' <<<"$unlisted")"
phase_done up

log "4/4 requests (RESTORE_INTRA_OP_THREADS=$THREADS in both servers)"
"$REPO/.venv/bin/python" "$REPO/tests/e2e/check_endpoints.py" \
    --container "http://127.0.0.1:$cport" --host "http://127.0.0.1:$hport" 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" = 0 ] || die "endpoint checks failed"
phase_done requests
