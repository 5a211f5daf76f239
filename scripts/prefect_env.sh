# Sourced by the prefect_*.sh scripts: a project-local Prefect (SQLite in .prefect/, 127.0.0.1).
source "$(dirname "${BASH_SOURCE[0]}")/python_env.sh"
export PREFECT_HOME=${PREFECT_HOME:-$NETADAPT_ROOT/.prefect}
export NETADAPT_PREFECT_PORT=${NETADAPT_PREFECT_PORT:-4200}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:$NETADAPT_PREFECT_PORT/api}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_URL=${PREFECT_UI_URL:-http://127.0.0.1:$NETADAPT_PREFECT_PORT}
# a steady allocator for latency measurements (see netadapt_core/platforms.py)
export MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456
PREFECT_BIN=${PREFECT_BIN:-$NETADAPT_BIN/prefect}
mkdir -p "$PREFECT_HOME"

# stop_pidfile FILE: SIGINT, then SIGTERM, then SIGKILL the process group started by the script
stop_pidfile() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  for sig in INT TERM KILL; do
    kill -"$sig" -- -"$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break 2; sleep 0.25; done
  done
  rm -f "$1"
}
