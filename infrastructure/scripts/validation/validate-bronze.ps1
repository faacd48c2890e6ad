# Validate npcflow's bronze tier(s) end to end: exits non-zero on failure (CI, release gates).
# Against the deployment NPCFLOW_* describes; pass --embedded to start a fresh embedded one,
# --json for one JSON line. Any other option goes to `npcflow validate` (see its --help).
$ErrorActionPreference = "Stop"
$npcflow = if ($env:NPCFLOW) { $env:NPCFLOW } else { "npcflow" }
& $npcflow validate bronze @args
exit $LASTEXITCODE
