#!/usr/bin/env bash
# Prints one line with the totals of a `cargo test` log, and fails if nothing ran: a
# suite that silently runs zero tests must not pass.
set -euo pipefail
label=$1 log=$2
read -r passed failed ignored < <(awk '/^test result:/ {p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}' "$log")
echo "== test totals ($label): $passed passed, $failed failed, $ignored ignored"
if [ "$passed" -eq 0 ] || [ "$failed" -ne 0 ] || [ "$ignored" -ne 0 ]; then
  echo "error: $label: expected passing tests and none failed or ignored" >&2
  exit 1
fi
