#!/usr/bin/env bash
# Build the image with podman and prove it: the container runs as a non-root
# user, answers /healthz and /readyz, serves the survey example, passes its own
# HEALTHCHECK, and writes compiled kernels to its cache volume.
#
# Needs no Docker daemon: podman (installed with apt-get when missing, as root)
# with a small containers.conf. When the registry's python:3.11-slim cannot be
# pulled, the base is Debian bookworm with Python 3.11, made with debootstrap
# and `podman import`. pip inside the build gets the host's CA bundle as a
# build secret. Takes a few minutes; `make image-test` runs it; CI does not.
#
# Environment: IMAGE (default localhost/adserve:test), BASE (skip the pull and
# use this base), KEEP=1 (keep the container and the work directory).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/adserve:test}
LOCAL_BASE=localhost/adserve-base:bookworm
work=$(mktemp -d /var/tmp/adserve-image.XXXXXX)
container=adserve-image-test-$$
say() { printf '[test-image] %s\n' "$*"; }

cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        podman rm -f "$container" >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# -- podman ---------------------------------------------------------------------
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "test-image: need ${need[*]} (apt-get install ${need[*]}, as root)" >&2; exit 1; }
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# default_ulimits no higher than the hard limits runc inherits (podman's defaults ask for more):
# the machine's for open files, and for processes also podman's own, which it sets to 32768
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# -- the base image ---------------------------------------------------------------
base=${BASE:-}
if [ -z "$base" ]; then
    if timeout 60 podman pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
        base=docker.io/library/python:3.11-slim-bookworm
    elif podman image exists "$LOCAL_BASE"; then
        base=$LOCAL_BASE
    else
        say "python:3.11-slim cannot be pulled; making $LOCAL_BASE with debootstrap"
        command -v debootstrap >/dev/null 2>&1 || {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
        mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
        rootfs="$work/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
            || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
               "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
               "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
        tar -C "$rootfs" -c . | podman import --quiet \
            --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$LOCAL_BASE" >/dev/null
        rm -rf "$rootfs"
        base=$LOCAL_BASE
    fi
fi

# -- build --------------------------------------------------------------------------
ca=/etc/ssl/certs/ca-certificates.crt
secret=()
[ -s "$ca" ] && secret=(--secret "id=ca,src=$ca")
say "building $IMAGE on $base"
start=$(date +%s)
podman build --format docker --network host --build-arg "BASE=$base" "${secret[@]}" -t "$IMAGE" . \
    >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
build_seconds=$(( $(date +%s) - start ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_seconds} s; image size $(( size / 1000000 )) MB"

# -- run and check ---------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); grpc_port=$(free_port)
volume=adserve-image-test-cache-$$
podman volume create "$volume" >/dev/null
trap 'cleanup; podman volume rm -f "$volume" >/dev/null 2>&1 || true' EXIT
# host network, loopback only: the server's own port setting comes from the environment.
# No systemd here to time the HEALTHCHECK: it is run by hand below instead (podman 4 still
# complains about the missing systemd; that goes to podman.log). Read-only root with a /tmp, as in deploy/k8s.
podman run -d --name "$container" --network host --health-interval disable --read-only --tmpfs /tmp \
    -v "$volume:/var/cache/adserve" \
    -e ADSERVE_HOST=127.0.0.1 -e ADSERVE_HTTP_PORT="$port" -e ADSERVE_GRPC_PORT="$grpc_port" "$IMAGE" >/dev/null 2>>"$work/podman.log"
url="http://127.0.0.1:$port"

fail() { echo "test-image: FAIL: $*" >&2; podman logs "$container" 2>&1 | tail -n 40 >&2; exit 1; }
for _ in $(seq 1 150); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    [ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] || fail "the container exited"
    sleep 0.2
done
curl -fsS "$url/readyz" >/dev/null || fail "/readyz not 200 after 30 s"
curl -fsS "$url/healthz" >/dev/null || fail "/healthz"

uid=$(podman exec "$container" id -u)
[ "$uid" != 0 ] || fail "the server runs as root"

survey='{"function": {"inputs": [{"name": "x1", "shape": []}, {"name": "x2", "shape": []}],
                      "expr": "log(x1) + x1*x2 - sin(x2)"},
         "inputs": {"x1": 2.0, "x2": 5.0}, "compute": ["value", "gradient"]}'
answer=$(curl -fsS "$url/v1/evaluate" -H 'Content-Type: application/json' -d "$survey") || fail "POST /v1/evaluate"
python3 - "$answer" <<'EOF' || fail "wrong survey answer: $answer"
import json, math, sys
r = json.loads(sys.argv[1])
assert math.isclose(r["value"], math.log(2) + 10 - math.sin(5), rel_tol=1e-12), r
assert math.isclose(r["gradient"]["x1"], 5.5, rel_tol=1e-12), r
assert math.isclose(r["gradient"]["x2"], 2 - math.cos(5), rel_tol=1e-12), r
EOF
again=$(curl -fsS "$url/v1/evaluate" -d "$survey")
[[ $again == *'"cached":true'* ]] || fail "the second answer is not from the result cache: $again"

# the optimiser streams NDJSON (SciPy in the image, intact)
rosen='{"inputs": [{"name": "x", "shape": [2]}], "expr": "(1 - x[0])**2 + 100*(x[1] - x[0]**2)**2"}'
fid=$(curl -fsS "$url/v1/functions" -d "$rosen" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') \
    || fail "register Rosenbrock"
last=$(curl -fsS -N "$url/v1/functions/$fid/minimize" -d '{"x0": {"x": [-1.2, 1.0]}, "method": "lbfgs"}' | tail -n 1)
python3 - "$last" <<'EOF' || fail "minimize did not reach (1, 1): $last"
import json, sys
p = json.loads(sys.argv[1])
assert p["done"] and all(abs(v - 1) < 1e-4 for v in p["x"]["x"]), p
EOF

podman healthcheck run "$container" >/dev/null 2>>"$work/podman.log" || fail "the image's HEALTHCHECK"

# what the Kubernetes startup probe asks: grpc.health.v1 says SERVING
if podman exec "$container" python -c 'import adserve.server.rpc' >/dev/null 2>&1; then
    podman exec "$container" python -c "
import sys, grpc
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g
r = g.HealthStub(grpc.insecure_channel('127.0.0.1:$grpc_port')).Check(h.HealthCheckRequest(), timeout=5)
sys.exit(r.status != h.HealthCheckResponse.SERVING)" || fail "gRPC health is not SERVING"
    grpc_note=", gRPC health SERVING"
else
    grpc_note=" (this build has no gRPC server)"
fi

# the kernel for the survey plan compiles in the background into the volume
for _ in $(seq 1 120); do
    podman exec "$container" sh -c 'ls /var/cache/adserve/kernels/*.py' >/dev/null 2>&1 && break
    sleep 0.5
done
podman exec "$container" sh -c 'ls /var/cache/adserve/kernels/*.py' >/dev/null 2>&1 \
    || fail "no compiled kernel in the cache volume"

start=$(date +%s%N)
podman stop -t 20 "$container" >/dev/null 2>>"$work/podman.log"
say "SIGTERM to exit: $(( ($(date +%s%N) - start) / 1000000 )) ms"
say "PASS: $IMAGE (${build_seconds} s build, $(( size / 1000000 )) MB) serves the survey example as uid $uid${grpc_note}"
