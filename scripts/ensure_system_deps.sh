#!/usr/bin/env bash
# Install the Debian packages the tests drive for real: Redis (Celery broker), Chromium (browser tests) and
# bubblewrap (the code sandbox's confinement, docs/GRADING.md); with the argument `venv`, python3.11-venv for
# `make` to create .venv; with `sandbox`, only bubblewrap.
# Does nothing when they are already there. Needs root or sudo on a Debian/Ubuntu machine.
set -euo pipefail

# `ensure_system_deps.sh venv`: only Python's venv module (Debian ships it apart from python3.11).
missing=()
if [ "${1:-}" = "venv" ]; then
    missing+=(python3.11-venv)
else
    [ -x /usr/bin/bwrap ] || missing+=(bubblewrap)
    if [ "${1:-}" != "sandbox" ]; then
        command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
        command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
    fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: the tests need ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
fi
echo "installing ${missing[*]} from Debian's packages ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
