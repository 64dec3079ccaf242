#!/usr/bin/env bash
# Builds the Python header-gate plugin into OUT_DIR/header_gate.wasm.
#
# Needs only python3 (with venv/pip) and PyPI: componentize-py comes as a wheel that bundles
# CPython for WASI, so no Rust, wasm-tools or WASI SDK is needed. Idempotent: the tool venv
# is reused while it holds the pinned version; nothing is written into the source tree.
#
# Usage: examples/plugins/python/build.sh OUT_DIR
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1 # pinned: the version checked against wit/filter.wit

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
VENV="$REPO/target/plugin-tools/python"
mkdir -p "$1"
OUT=$(cd "$1" && pwd)/header_gate.wasm

# The tool venv: (re)made only when it is missing, broken or holds another version.
tool="$VENV/bin/componentize-py"
if [[ "$("$tool" --version 2>/dev/null || true)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
    log=$(mktemp)
    if ! {
        { [[ -x "$VENV/bin/python" ]] || python3 -m venv --clear "$VENV"; } &&
            "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
                "componentize-py==$COMPONENTIZE_PY_VERSION"
    } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "build.sh: could not install componentize-py $COMPONENTIZE_PY_VERSION into $VENV" >&2
        exit 1
    fi
    rm -f "$log"
fi

# Build from a copy of the source in a temp dir: componentize-py imports the app with the
# host Python, which would otherwise leave __pycache__ in the source tree. The bindings for
# the world are generated inside `componentize` itself, into its own temp space, so no
# separate `bindings` step is needed.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$HERE/header_gate.py" "$work/"

# --stub-wasi: the Python runtime imports wasi:filesystem/types and wasi:sockets/*, which the
# host does not link (a plugin gets no files or network). Stubbing every WASI import leaves
# a component that imports only weft:filter. Costs: print()/stderr and file access trap
# (log with host.log instead), and `random` is seeded at build time (use host.random_u64).
PYTHONDONTWRITEBYTECODE=1 "$tool" -q -d "$REPO/wit" -w plugin \
    componentize --stub-wasi -p "$work" header_gate -o "$work/header_gate.wasm"
mv "$work/header_gate.wasm" "$OUT"

echo "built $OUT ($(wc -c <"$OUT" | tr -d ' ') bytes)"
