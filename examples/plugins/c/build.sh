#!/usr/bin/env bash
# Builds the C rate-limit plugin into OUT_DIR/rate_limit.wasm.
#
# Needs cargo (the repository's toolchain) and Debian's clang-19, lld-19, the wasm32
# compiler-rt and wasi-libc, which it installs with apt-get when missing. The bindings and the
# component come from a small Rust tool (tool/, its own workspace and Cargo.lock) that uses
# wit-bindgen's C generator and wit-component as libraries, at the versions the rest of the
# repository uses. Idempotent: the tool is built into target/plugin-tools/c-tool (cargo
# rebuilds nothing when it is current); bindings and objects go to a temp dir, never into the
# source tree.
#
# Usage: examples/plugins/c/build.sh OUT_DIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)/rate_limit.wasm

# Debian bookworm's wasm32 C toolchain: headers and libc.a under /usr/{include,lib}/wasm32-wasi,
# compiler-rt under clang's resource dir.
CC=clang-19
SYSROOT=/usr
if ! command -v "$CC" >/dev/null || ! command -v wasm-ld-19 >/dev/null ||
    [[ ! -f /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a ]] ||
    [[ ! -f "$SYSROOT/lib/wasm32-wasi/libc.a" ]]; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log=$(mktemp)
    if ! { "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
            clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "build.sh: could not install clang-19, lld-19, libclang-rt-19-dev-wasm32, wasi-libc" >&2
        exit 1
    fi
    rm -f "$log"
fi

# The tool, built only when missing or older than its sources (a current one costs no cargo
# run at all: this script may run inside another cargo's test).
TOOL_TARGET="$REPO/target/plugin-tools/c-tool"
tool="$TOOL_TARGET/release/weft-c-plugin-tool"
if ! [[ -x "$tool" && "$tool" -nt "$HERE/tool/Cargo.toml" && "$tool" -nt "$HERE/tool/Cargo.lock" &&
    "$tool" -nt "$HERE/tool/src/main.rs" ]]; then
    cargo build --release --locked --quiet \
        --manifest-path "$HERE/tool/Cargo.toml" --target-dir "$TOOL_TARGET"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# plugin.h, plugin.c (the canonical ABI glue) and plugin_component_type.o (the world's type, a
# custom section the linker keeps and wit-component reads).
"$tool" bindgen "$REPO/wit" plugin "$work"

# A reactor (no main; `_initialize` runs constructors, and wit-component calls it at
# instantiation). The code uses only malloc/free/realloc/memcpy/strlen/abort from wasi-libc,
# none of which import WASI, so the core module imports weft:filter alone and needs no
# preview1 adapter (`componentize` refuses a module that imports WASI).
"$CC" --target=wasm32-wasi --sysroot="$SYSROOT" -mexec-model=reactor \
    -O2 -std=c11 -Wall -Wextra -Werror \
    -I "$work" -o "$work/core.wasm" \
    "$HERE/rate_limit.c" "$work/plugin.c" "$work/plugin_component_type.o" \
    -Wl,--strip-debug

"$tool" componentize "$work/core.wasm" "$work/rate_limit.wasm"
mv "$work/rate_limit.wasm" "$OUT"

echo "built $OUT ($(wc -c <"$OUT" | tr -d ' ') bytes)"
