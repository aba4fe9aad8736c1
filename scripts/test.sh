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
echo "== the device build without the embedded broker compiles (README, Binary size)"
cargo clippy --locked --no-default-features --features i2c -- -D warnings

# Test binaries that start several agents at once run one test at a time: on two cores
# parallel clusters would only measure each other's contention. The browser tests need
# Chromium, which does not run under qemu-user, so the ARM run leaves them out; the
# network lab tests network behaviour (NAT, TURN, loss), which emulating the CPU would
# only slow down, so they run natively only.
parallel=(cli sensors store mqtt dataplane interop hostile)
serial=(replication retention)
native_only=(browser netlab)
for f in tests/*.rs; do
  t=$(basename "$f" .rs)
  [[ " ${parallel[*]} ${serial[*]} ${native_only[*]} " == *" $t "* ]] || { echo "error: scripts/test.sh does not run tests/$t.rs; add it to a list" >&2; exit 1; }
done
test_args() { for t in "$@"; do printf -- '--test\n%s\n' "$t"; done; }
mapfile -t par < <(test_args "${parallel[@]}")
mapfile -t ser < <(test_args "${serial[@]}" "${native_only[@]}")
mapfile -t ser_arm < <(test_args "${serial[@]}")

echo "== tests: the patched rtc-sctp's, rtc-dtls's and webrtc's own unit tests (patches/SCTP-RTO.md)"
# webrtc's tests that run the whole stack on a virtual clock need its mock runtime.
for crate in rtc-sctp rtc-dtls webrtc; do
  features=()
  [[ $crate == webrtc ]] && features=(--features runtime-mock)
  CARGO_TARGET_DIR=target/patches cargo test --locked --manifest-path "patches/$crate/Cargo.toml" --lib "${features[@]}" 2>&1 | tail -3
done

echo "== tests: native ($(uname -m))"
{
  cargo test --locked --lib --bins "${par[@]}"
  cargo test --locked "${ser[@]}" -- --test-threads=1
} 2>&1 | tee target/test-native.log
scripts/summarize-tests.sh native target/test-native.log

echo "== tests: aarch64-unknown-linux-gnu under qemu-aarch64 (all but the browser tests)"
# The cargo runner in .cargo/config.toml runs each test binary under qemu; the tests that
# start the agent binary get the same emulator through DDC_EDGE_TEST_RUNNER.
export DDC_EDGE_TEST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
{
  cargo test --locked --target aarch64-unknown-linux-gnu --lib --bins "${par[@]}"
  cargo test --locked --target aarch64-unknown-linux-gnu "${ser_arm[@]}" -- --test-threads=1
} 2>&1 | tee target/test-aarch64.log
scripts/summarize-tests.sh aarch64-qemu target/test-aarch64.log
