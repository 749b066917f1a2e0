#!/usr/bin/env bash
# Fails when proto/ breaks buf's lint rules or src/gen/ is not what proto/ generates
# (changed, missing or extra files).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
npx buf lint
npx buf generate
if [ -n "$(git status --porcelain -- src/gen)" ]; then
  echo "src/gen is stale: run 'npm run generate' and commit the result" >&2
  git status --porcelain -- src/gen >&2
  exit 1
fi
echo "generated code is up to date"
