#!/usr/bin/env bash
# Fails when generated code is not up to date: runs `make generate` and
# checks that no generated file (*.pb.go) changed and none appeared that is
# not committed.
set -euo pipefail
cd "$(dirname "$0")/.."

make generate >/dev/null

status=0
if ! git diff --exit-code --stat -- '*.pb.go'; then
  echo "check-generated: generated code is stale; run 'make generate' and commit the result" >&2
  git diff -- '*.pb.go' | head -100 >&2
  status=1
fi
untracked=$(git ls-files --others --exclude-standard -- '*.pb.go')
if [ -n "$untracked" ]; then
  echo "check-generated: 'make generate' wrote files that are not committed:" >&2
  echo "$untracked" >&2
  status=1
fi
exit $status
