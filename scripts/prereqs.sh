#!/usr/bin/env bash
# Installs what building and testing ddc-edge needs on a fresh Debian machine, skipping
# whatever is already there: the cross compilers and qemu-user for ARM, mosquitto for the
# MQTT tests, and the Rust targets and components. Safe to run repeatedly.
set -euo pipefail

APT_PACKAGES=(
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  qemu-user binutils
  mosquitto mosquitto-clients openssl shellcheck systemd
  python3 python3-venv
  chromium
  iproute2 iptables coturn
  groff-base
  prometheus
)
RUST_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm by command, not by package: a NodeSource nodejs bundles npm and
# conflicts with Debian's npm package.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# mosquitto's package starts a system broker on 1883; the tests start their own on free
# ports, so the system one is neither needed nor in the way. prometheus is there for
# promtool (tests/mqtt.rs checks the agent's /metrics with it); its server is not used.

# Python peer for the interop test (aiortc), in a venv under target/ so the system
# Python is left alone. Pinned to the versions the test was written against.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$here/target/pyenv/bin/python" ] || ! "$here/target/pyenv/bin/python" -c 'import aiortc, paho.mqtt' 2>/dev/null; then
  echo "== creating the Python environment for the interop test (target/pyenv)"
  mkdir -p "$here/target"
  python3 -m venv "$here/target/pyenv"
  "$here/target/pyenv/bin/pip" install -q --disable-pip-version-check aiortc==1.16.0 paho-mqtt==2.2.0
fi

# playwright-core for the browser tests, from the lock file; it drives /usr/bin/chromium
# and never downloads a browser of its own.
if [ ! -d "$here/tests/browser/node_modules/playwright-core" ]; then
  echo "== installing playwright-core for the browser tests"
  (cd "$here/tests/browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

installed_targets=$(rustup target list --installed)
for t in "${RUST_TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
installed_components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$installed_components" || rustup component add "$c"
done
