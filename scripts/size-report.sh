#!/usr/bin/env bash
# The binary-size benchmark: builds the agent for every shipped target twice and prints
# the stripped sizes against the 8 MiB budget (README, "Binary size").
#
#   release: what packages ship (profile release: opt-level 3, default features, with the
#            embedded MQTT broker);
#   device:  the size-first build (profile device: opt-level "s", ring at 3) without the
#            embedded broker: `--profile device --no-default-features --features i2c`.
#
# Usage: scripts/size-report.sh [TARGET...]   (default: the three shipped targets)
# Slow: six fat-LTO builds, about 40 minutes cold on two cores, so it is not part of
# .ci/run (which prints the release sizes it builds anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

budget=$((8 * 1024 * 1024))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)

rows=()
for target in "${targets[@]}"; do
  for build in release device; do
    case $build in
      release) bin=$(scripts/build-release.sh "$target" | tail -n 1) ;;
      device) bin=$(DDC_EDGE_BUILD=device scripts/build-release.sh "$target" | tail -n 1) ;;
    esac
    size=$(stat -c %s "$bin")
    verdict=over
    [ "$size" -le "$budget" ] && verdict=within
    rows+=("$(printf '%-32s %-8s %10d B %6d KiB  %s the 8 MiB budget' "$target" "$build" "$size" $((size / 1024)) "$verdict")")
  done
done
echo "== stripped binary sizes (release: opt-level 3, default features; device: opt-level s, no embedded broker)"
printf '%s\n' "${rows[@]}"
