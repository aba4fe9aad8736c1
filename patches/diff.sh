#!/usr/bin/env bash
# Prints the diff of the patched crates against their crates.io releases, the text of the
# "Diff against upstream" section of patches/SCTP-RTO.md. Fetches the .crate files.
set -euo pipefail
cd "$(dirname "$0")/.."
up=$(mktemp -d)
trap 'rm -rf "$up"' EXIT
for crate in rtc-sctp rtc-dtls rtc webrtc; do
    curl -sfL "https://static.crates.io/crates/$crate/$crate-0.21.1.crate" | tar xz -C "$up"
    diff -ru "$up/$crate-0.21.1/src" "patches/$crate/src" |
        sed -E -e "s|$up||" -e 's/^((---|\+\+\+) [^[:space:]]+).*/\1/' || true
done
