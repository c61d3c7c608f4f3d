#!/usr/bin/env bash
# Builds the `shoal` container image FROM scratch: release binaries plus the
# shared libraries ldd reports for them. Usage: deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-shoal:dev}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bin shoal --bin shoalctl
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/data" "$ctx/rootfs/tmp"
for b in shoal shoalctl; do
  cp "$target/release/$b" "$ctx/rootfs/usr/local/bin/"
  # Every shared library (and the loader) at its own path.
  ldd "$target/release/$b" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
done
cp deploy/Dockerfile "$ctx/"
docker build -t "$tag" "$ctx"
echo "built $tag"
