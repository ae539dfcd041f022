#!/usr/bin/env bash
# Redis for TTH's shared session store (store.kind: redis) and for its tests.
#
#   scripts/redis.sh install        install redis-server with apt-get unless it is on PATH
#   scripts/redis.sh start [PORT]   start a throwaway redis-server on 127.0.0.1:PORT (default 6379):
#                                   no persistence, daemonized, pid file /tmp/tth-redis-PORT.pid
#   scripts/redis.sh stop [PORT]    stop the one `start` started
#
# The tests need only `install`: they start their own redis-server on a free port.
set -euo pipefail

install() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis.sh: redis-server is missing and apt-get is not available; install Redis (>= 6) yourself" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  command -v redis-server >/dev/null
}

start() {
  local port="${1:-6379}"
  install
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --daemonize yes --pidfile "/tmp/tth-redis-$port.pid" --logfile "/tmp/tth-redis-$port.log"
  for _ in $(seq 50); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
      echo "redis-server listening on 127.0.0.1:$port (TTH_STORE__URL=redis://127.0.0.1:$port/0)"
      return 0
    fi
    sleep 0.1
  done
  echo "redis.sh: redis-server did not answer on port $port; see /tmp/tth-redis-$port.log" >&2
  exit 1
}

stop() {
  local port="${1:-6379}"
  local pidfile="/tmp/tth-redis-$port.pid"
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *)
    echo "usage: scripts/redis.sh install | start [PORT] | stop [PORT]" >&2
    exit 2
    ;;
esac
