#!/usr/bin/env bash
# Build fanout's images with a local Docker engine (what `make images` runs).
#
#   images/build.sh [--base IMAGE|standin] [--tag TAG] [--wheels DIR] [airflow] [gpu-worker] [postgres-standin]
#
# --base     the Airflow base image (default: the official apache/airflow:3.3.2-python3.11);
#            `standin` builds images/airflow-base (a local stand-in, for machines without a
#            registry) and uses it.
# --tag      image tag (default: the version in pyproject.toml); images are fanout-airflow:TAG
#            and fanout-gpu-worker:TAG.
# --wheels   a directory of wheels served to the build on loopback, searched before the indexes
#            (default: $PIP_FIND_LINKS when it is a local directory). download.pytorch.org is
#            then not asked for the CPU build of torch; pip takes it from there.
# postgres-standin is fanout-postgres-standin:15 (images/postgres-standin), for docker-compose.yml
# where postgres:17 cannot be pulled. With no image named, builds the airflow image. Uses $DOCKER_HOST, else starts the private
# engine of images/dockerd.sh. Prints the built image names and each build's seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OFFICIAL_BASE=apache/airflow:3.3.2-python3.11
BASE="$OFFICIAL_BASE"
TAG="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")"
WHEELS=""
[[ -n "${PIP_FIND_LINKS:-}" && -d "${PIP_FIND_LINKS}" ]] && WHEELS="$PIP_FIND_LINKS"
IMAGES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    airflow | gpu-worker | postgres-standin) IMAGES+=("$1"); shift ;;
    *) echo "usage: $0 [--base IMAGE|standin] [--tag TAG] [--wheels DIR] [airflow] [gpu-worker] [postgres-standin]" >&2; exit 2 ;;
  esac
done
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(airflow)

"$ROOT/images/dockerd.sh" start
eval "$("$ROOT/images/dockerd.sh" env)"

if [[ "$BASE" == standin ]]; then
  started=$SECONDS
  BASE="$("$ROOT/images/airflow-base/build.sh")"
  echo "base $BASE (local stand-in of $OFFICIAL_BASE) $((SECONDS - started))s"
fi

args=(--network host --build-arg "AIRFLOW_BASE=$BASE")
if [[ -n "$WHEELS" ]]; then
  # The URL is a build argument, so part of the layer cache key: one port per checkout while it
  # is free (a random one otherwise, which rebuilds the pip layer).
  port="$(python3 - "$ROOT" <<'PY'
import hashlib, socket, sys
preferred = 20000 + int(hashlib.sha1(sys.argv[1].encode()).hexdigest(), 16) % 20000
for port in (preferred, 0):
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        pass
PY
)"
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$WHEELS" >/dev/null 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true' EXIT
  for _ in $(seq 1 50); do
    curl -fs "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.1
  done
  args+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/" --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/")
fi

for image in "${IMAGES[@]}"; do
  started=$SECONDS
  log="$(mktemp /tmp/fanout-build-$image.XXXXXX.log)"
  if [[ "$image" == postgres-standin ]]; then
    # Debian's postgresql on the stand-in's Debian image (built with it).
    docker image inspect fanout-debian:bookworm-python3.11 >/dev/null 2>&1 || "$ROOT/images/airflow-base/build.sh" >/dev/null
    name=fanout-postgres-standin:15
    build=(--network host -t "$name" "$ROOT/images/postgres-standin")
  else
    name="fanout-$image:$TAG"
    build=("${args[@]}" -f "$ROOT/images/$image/Dockerfile" -t "$name" "$ROOT")
  fi
  if ! DOCKER_BUILDKIT=0 docker build "${build[@]}" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build of images/$image failed; full log: $log" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$name $((SECONDS - started))s"
done
