#!/usr/bin/env bash
# Builds the request-id JavaScript plugin into OUT_DIR/request_id.wasm.
# Needs node and npm only. Tools go to $REPO/target/plugin-tools/js (pinned by this folder's
# package.json and package-lock.json, installed with `npm ci`, reused when already there);
# nothing is written into the source tree.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
TOOLS="$REPO/target/plugin-tools/js"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)/request_id.wasm"

# Reinstall only when the pinned lock changed (or nothing is installed yet).
if ! cmp -s "$HERE/package-lock.json" "$TOOLS/package-lock.json" ||
  [ ! -f "$TOOLS/node_modules/@bytecodealliance/componentize-js/package.json" ]; then
  mkdir -p "$TOOLS"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$TOOLS/"
  npm ci --prefix "$TOOLS" --no-audit --no-fund --loglevel=error >&2
fi

node "$HERE/componentize.mjs" "$TOOLS" "$REPO/wit" "$OUT"
echo "built $OUT ($(wc -c <"$OUT") bytes)"
