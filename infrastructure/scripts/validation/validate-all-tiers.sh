#!/usr/bin/env bash
# Validate npcflow's all tier(s) end to end: exits non-zero on failure (CI, release gates).
# Against the deployment NPCFLOW_* describes; pass --embedded to start a fresh embedded one,
# --json for one JSON line. Any other option goes to `npcflow validate` (see its --help).
set -euo pipefail
NPCFLOW="${NPCFLOW:-npcflow}"
exec "$NPCFLOW" validate all "$@"
