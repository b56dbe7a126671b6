#!/usr/bin/env bash
# System packages the tests use. redis-server backs the scale-out tests, which start
# their own on a free loopback port (never a system service); they skip without it,
# and fail under CI=true. Idempotent and quiet: installs only what is missing, runs
# `apt-get update` at most once, and never fails the build itself.
set -uo pipefail

want=()
command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
[ ${#want[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: no apt-get; missing (optional): ${want[*]}" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "install-system-deps: not root; missing (optional): ${want[*]}" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null 2>&1 || echo "install-system-deps: apt-get update failed; trying the cached lists" >&2
for pkg in "${want[@]}"; do
    $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
        || echo "install-system-deps: could not install $pkg (optional)" >&2
done
exit 0
