#!/usr/bin/env bash
# The test command from README.md. On a fresh Debian machine it first installs what the
# tests need (scripts/prereqs.sh), then runs, failing on the first problem:
#   1. cargo fmt --check and cargo clippy --all-targets -D warnings
#   2. the whole test suite natively
#   3. the same suite cross-compiled for aarch64 and run under qemu-aarch64
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/prereqs.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== tests: native ($(uname -m))"
cargo test --locked 2>&1 | tee target/test-native.log
scripts/summarize-tests.sh native target/test-native.log

echo "== tests: aarch64-unknown-linux-gnu under qemu-aarch64"
# The cargo runner in .cargo/config.toml runs each test binary under qemu; the tests that
# start the agent binary get the same emulator through DDC_EDGE_TEST_RUNNER.
DDC_EDGE_TEST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
  cargo test --locked --target aarch64-unknown-linux-gnu 2>&1 | tee target/test-aarch64.log
scripts/summarize-tests.sh aarch64-qemu target/test-aarch64.log
