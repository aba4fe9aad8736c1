#!/usr/bin/env bash
# Builds the release binary for TARGET (default: the host) without a container and prints
# its path on the last line. Users with Docker or Podman can run
# `cross build --release --target TARGET` instead (Cross.toml).
#
# DDC_EDGE_BUILD=device builds the size-first device binary instead: the `device`
# profile (opt-level "s") without the embedded MQTT broker (README, "Binary size").
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-}
case ${DDC_EDGE_BUILD:-release} in
  release) args=(--release) profile=release ;;
  device) args=(--profile device --no-default-features --features i2c) profile=device ;;
  *) echo "error: DDC_EDGE_BUILD must be release or device, not ${DDC_EDGE_BUILD}" >&2; exit 2 ;;
esac
dir=${CARGO_TARGET_DIR:-target}
if [ -z "$target" ]; then
  cargo build --locked "${args[@]}" >&2
  echo "$dir/$profile/ddc-edge"
else
  cargo build --locked "${args[@]}" --target "$target" >&2
  echo "$dir/$target/$profile/ddc-edge"
fi
