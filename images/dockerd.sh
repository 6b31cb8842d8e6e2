#!/usr/bin/env bash
# A private Docker engine for this checkout, for machines without a running one (CI, a bare
# Debian host without systemd). Idempotent:
#   images/dockerd.sh start    # start it unless it answers already; prints nothing else
#   images/dockerd.sh env      # export DOCKER_HOST=unix://...   (eval "$(images/dockerd.sh env)")
#   images/dockerd.sh stop     # stop it (containers and images stay in its data root)
#   images/dockerd.sh status   # exit 0 when it answers
# Set DOCKER_HOST yourself to use another engine: `start` then only checks that it answers.
#
# Images and the build cache live in FANOUT_DOCKER_DATA (default .docker/ in the checkout, ignored
# by git and by the build context); runtime state and the socket in a short path under /run
# (unix socket paths are limited to 108 bytes). The engine gets no default bridge: builds use
# --network host, compose creates its own networks.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${FANOUT_DOCKER_DATA:-$ROOT/.docker}"
KEY="$(printf '%s' "$DATA" | sha1sum | cut -c1-10)"
RUNDIR="/run/fanout-docker/$KEY"
SOCK="$RUNDIR/docker.sock"
PIDFILE="$RUNDIR/dockerd.pid"
LOG="$DATA/dockerd.log"

own_host() { echo "unix://$SOCK"; }

host() { echo "${DOCKER_HOST:-$(own_host)}"; }

answers() { DOCKER_HOST="$(host)" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  if answers; then
    return 0
  fi
  if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != "$(own_host)" ]]; then
    echo "dockerd.sh: DOCKER_HOST=$DOCKER_HOST does not answer" >&2
    return 1
  fi
  command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd not found (apt-get install docker.io)" >&2; return 1; }
  mkdir -p "$DATA" "$RUNDIR"
  # A stale pid file from a killed engine would make dockerd refuse to start.
  if [[ -f "$PIDFILE" ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    rm -f "$PIDFILE"
  fi
  setsid dockerd \
    --data-root "$DATA/data" \
    --exec-root "$RUNDIR/exec" \
    --pidfile "$PIDFILE" \
    -H "$(own_host)" \
    --bridge none \
    --storage-driver overlay2 \
    >>"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    if answers; then
      return 0
    fi
    sleep 0.5
  done
  echo "dockerd.sh: dockerd did not answer within 60s; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  return 1
}

# A dockerd that did not exit cleanly leaves its data root's bind mount and netns mounts behind
# (seen after a CI run): the checkout then cannot be removed ("Device or resource busy").
# Lazily unmount whatever is left under its paths, deepest first.
unmount_leftovers() {
  local mounts
  mounts="$(awk -v data="$DATA/" -v run="$RUNDIR/" \
    'index($2 "/", data) == 1 || index($2 "/", run) == 1 { print $2 }' /proc/self/mounts | sort -r)"
  [[ -z "$mounts" ]] || xargs -r -n1 umount -l <<<"$mounts" || true
}

stop() {
  [[ -f "$PIDFILE" ]] || return 0
  local pid
  pid="$(cat "$PIDFILE")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; unmount_leftovers; return 0; }
    sleep 0.5
  done
  # Still running after 30 s: kill it, so that CI's exit leaves no engine and no mount behind.
  echo "dockerd.sh: dockerd $pid still running after 30s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  rm -f "$PIDFILE"
  unmount_leftovers
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  env) echo "export DOCKER_HOST=$(host)" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
