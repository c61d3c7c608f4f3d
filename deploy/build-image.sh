#!/usr/bin/env bash
# Builds the `shoal` container image FROM scratch: release binaries plus the
# shared libraries ldd reports for them. Usage: deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-shoal:dev}"
# SHOAL_BIN_DIR: take already built binaries from there (the container
# tests do); otherwise build them.
if [ -n "${SHOAL_BIN_DIR:-}" ]; then
  bin_dir="$SHOAL_BIN_DIR"
else
  cargo build --release --bin shoal --bin shoalctl
  bin_dir="${CARGO_TARGET_DIR:-target}/release"
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/owned/data" "$ctx/owned/tmp" "$ctx/owned/tls"
for b in shoal shoalctl; do
  cp "$bin_dir/$b" "$ctx/rootfs/usr/local/bin/"
  # Every shared library (and the loader) at its own path.
  ldd "$bin_dir/$b" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
done
cp deploy/Dockerfile "$ctx/"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag"
