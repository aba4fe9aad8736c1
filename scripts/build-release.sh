#!/usr/bin/env bash
# Builds the release binary for TARGET (default: the host) without a container and prints
# its path on the last line. Users with Docker or Podman can run
# `cross build --release --target TARGET` instead (Cross.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-}
if [ -z "$target" ]; then
  cargo build --release --locked >&2
  echo "target/release/ddc-edge"
else
  cargo build --release --locked --target "$target" >&2
  echo "target/$target/release/ddc-edge"
fi
