#!/usr/bin/env bash
# Validate npcflow's silver tier(s) end to end: exits non-zero on failure (CI, release gates).
# Against the deployment NPCFLOW_* describes; pass --embedded to start a fresh embedded one,
# --json for one JSON line. Any other option goes to `npcflow validate` (see its --help).
set -euo pipefail
# $NPCFLOW, else the checkout's .venv (what `make` installs), else npcflow on PATH.
CHECKOUT_NPCFLOW="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/.venv/bin/npcflow"
if [ -z "${NPCFLOW:-}" ]; then
  if [ -x "$CHECKOUT_NPCFLOW" ]; then NPCFLOW="$CHECKOUT_NPCFLOW"
  elif command -v npcflow >/dev/null; then NPCFLOW=npcflow
  else echo "npcflow not found: run \`make venv\` in the checkout, or pip install npcflow, or set NPCFLOW=/path/to/npcflow" >&2; exit 127
  fi
fi
exec "$NPCFLOW" validate silver "$@"
