#!/usr/bin/env bash
# Register every deployment of prefect.yaml with the local server (run prefect_server.sh first).
set -euo pipefail
source "$(dirname "$0")/prefect_env.sh"
cd "$NETADAPT_ROOT"
"$PREFECT_BIN" work-pool inspect netadapt-pool > /dev/null 2>&1 \
  || "$PREFECT_BIN" work-pool create netadapt-pool --type process > /dev/null
"$PREFECT_BIN" --no-prompt deploy --all
