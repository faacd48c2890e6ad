# Validate npcflow's gold tier(s) end to end: exits non-zero on failure (CI, release gates).
# Against the deployment NPCFLOW_* describes; pass --embedded to start a fresh embedded one,
# --json for one JSON line. Any other option goes to `npcflow validate` (see its --help).
$ErrorActionPreference = "Stop"
# $env:NPCFLOW, else the checkout's .venv (what `make` installs), else npcflow on PATH.
$checkout = Join-Path $PSScriptRoot "../../../.venv/bin/npcflow"
$npcflow = if ($env:NPCFLOW) { $env:NPCFLOW } elseif (Test-Path $checkout) { $checkout } else { "npcflow" }
& $npcflow validate gold @args
exit $LASTEXITCODE
