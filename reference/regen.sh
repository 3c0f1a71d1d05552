#!/usr/bin/env bash
# Regenerate tests/fixtures with the PyTorch reference, then run the reference's tests.
#   bash reference/regen.sh
# The venv lives outside the repo: $HBRIDGE_REF_VENV, default <repo>/../venv-ref (created if missing).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
VENV="${HBRIDGE_REF_VENV:-$(dirname "$REPO")/venv-ref}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"

# the tokenizer asset is committed and embedded by the Rust side: only check that it is still reproducible
"$VENV/bin/python" "$HERE/make_tokenizer.py" --check

"$VENV/bin/python" "$HERE/generate_fixtures.py"
(cd "$HERE" && "$VENV/bin/python" -m pytest -q tests)

echo "tests/fixtures:"
du -sh "$REPO/tests/fixtures"/*
du -sb "$REPO/tests/fixtures" | awk '{printf "total %d bytes (limit 8000000)\n", $1}'
