#!/usr/bin/env bash
# Runs docker compose on the repository's docker-compose.yml with whichever
# compose this machine has: the `docker compose` plugin or the standalone
# `docker-compose` (Debian's package, v1, which has no `up --wait`);
# CAPSTAN_COMPOSE=plugin or CAPSTAN_COMPOSE=standalone picks one.
#
#   deploy/compose.sh up          # up -d, then wait until every container is healthy
#   deploy/compose.sh down [-v]   # stop; -v also deletes the data volumes
#   deploy/compose.sh ARGS...     # anything else goes to compose as is (ps, logs, kill ...)
#
# COMPOSE_WAIT_TIMEOUT (seconds, default 120) bounds the wait for health
# under docker-compose v1.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${CAPSTAN_COMPOSE:-}" in
  plugin) compose=(docker compose) ;;
  standalone) compose=(docker-compose) ;;
  "")
    if docker compose version >/dev/null 2>&1; then
      compose=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
      compose=(docker-compose)
    else
      echo "compose.sh: neither 'docker compose' nor 'docker-compose' is installed" >&2
      exit 1
    fi ;;
  *)
    echo "compose.sh: CAPSTAN_COMPOSE is plugin (docker compose) or standalone (docker-compose), not '${CAPSTAN_COMPOSE}'" >&2
    exit 2 ;;
esac

# wait_healthy polls the health of every container of the project until all
# are healthy, one has no health check and is running, or the time is up.
wait_healthy() {
  local deadline=$((SECONDS + ${COMPOSE_WAIT_TIMEOUT:-120}))
  local ids status pending
  mapfile -t ids < <("${compose[@]}" ps -q)
  if ((${#ids[@]} == 0)); then
    echo "compose.sh: no containers to wait for" >&2
    return 1
  fi
  while :; do
    pending=()
    for id in "${ids[@]}"; do
      status=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
      case "${status#* }" in
        healthy|running) ;;
        exited|dead|unhealthy)
          echo "compose.sh: ${status}" >&2
          "${compose[@]}" ps >&2
          "${compose[@]}" logs --tail=30 >&2
          return 1 ;;
        *) pending+=("${status}") ;;
      esac
    done
    if ((${#pending[@]} == 0)); then
      echo "all ${#ids[@]} containers healthy"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      echo "compose.sh: not healthy after ${COMPOSE_WAIT_TIMEOUT:-120}s: ${pending[*]}" >&2
      "${compose[@]}" logs --tail=30 >&2
      return 1
    fi
    sleep 1
  done
}

case "${1:-}" in
  up)
    shift
    if [[ "${compose[*]}" == "docker compose" ]]; then
      # The health checks end in "unhealthy" within start_period + retries, so --wait cannot hang.
      "${compose[@]}" up -d --wait "$@"
    else
      "${compose[@]}" up -d "$@"
      wait_healthy
    fi
    ;;
  *)
    exec "${compose[@]}" "$@"
    ;;
esac
