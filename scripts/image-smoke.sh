#!/usr/bin/env bash
# Smoke test of a built CPU image without running a container (`make image-smoke`): on machines whose
# sandbox refuses OCI runtimes (crun/runc), the image's root filesystem is mounted (podman image mount;
# with docker, exported to a folder) and its programs run under chroot as the image's user 10001, with
# the image's environment. Three checks:
#   1. the entrypoint: `montessori --help`;
#   2. the teacher service on loopback (plaintext, --insecure) with the tiny teacher preloaded reaches SERVING;
#   3. a tiny loop: `montessori run --config /app/configs/tiny.yaml` (artifacts and report under /tmp).
# The tiny models (models/tiny-*, built by `make setup`) are copied into the chroot's /tmp, a host
# folder bind-mounted there, beside a link to the image's /app/data. Needs root (chroot, mount).
#
#   scripts/image-smoke.sh [IMAGE]      (default ghcr.io/montessori-dev/montessori:0.1.0-cpu)
set -euo pipefail

image=${1:-ghcr.io/montessori-dev/montessori:0.1.0-cpu}
container=${CONTAINER:-$(command -v podman || command -v docker)}
repo=$(cd "$(dirname "$0")/.." && pwd)
port=${SMOKE_PORT:-50151}
loop_timeout=${SMOKE_LOOP_TIMEOUT:-900}

work=$(mktemp -d)
root=""
exported=""
mounted=()
server=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  if [[ -n "$exported" ]]; then rm -rf "$exported"; elif [[ -n "$root" ]]; then "$container" image unmount "$image" >/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [[ "$(basename "$container")" == podman* ]]; then
  root=$("$container" image mount "$image")
else
  exported=$(mktemp -d)
  cid=$("$container" create "$image")
  "$container" export "$cid" | tar -x -C "$exported"
  "$container" rm "$cid" >/dev/null
  root=$exported
fi
echo "image root: $root"

# /dev, /proc and a writable /tmp for the chroot (the image's own folders stay untouched).
for dir in dev proc; do mount --rbind "/$dir" "$root/$dir" && mounted+=("$root/$dir"); done
mount --bind "$work" "$root/tmp" && mounted+=("$root/tmp")
chmod 1777 "$work"
mkdir -p "$work/smoke/models"
cp -r "$repo"/models/tiny-teacher "$repo"/models/tiny-student "$work/smoke/models/"
# The config's relative paths (models/tiny-*, data/seed.jsonl) resolve in /tmp/smoke: data is the image's.
ln -s /app/data "$work/smoke/data"
chown -R 10001:10001 "$work/smoke"

# The image's ENV (PATH=/opt/venv/bin:..., the offline switches), then the smoke test's settings.
mapfile -t image_env < <("$container" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep .)
in_image() {
  chroot --userspec=10001:10001 "$root" /usr/bin/env -i "${image_env[@]}" HOME=/tmp/smoke \
    MONTESSORI_MODELS_DIR=/tmp/smoke/models MONTESSORI_TORCH_THREADS=1 MONTESSORI_LOG_JSON=0 \
    /bin/sh -c 'cd /tmp/smoke && exec "$@"' sh "$@"
}

echo "== 1. montessori --help (the entrypoint)"
in_image montessori --help | head -n 5
echo "   user inside: $(in_image id -u):$(in_image id -g)"

echo "== 2. montessori serve teacher --insecure on 127.0.0.1:$port (tiny teacher preloaded)"
in_image montessori serve teacher --insecure --host 127.0.0.1 --port "$port" --metrics-port 0 \
  --artifacts /tmp/smoke/store --preload /tmp/smoke/models/tiny-teacher > "$work/teacher.log" 2>&1 &
server=$!
start=$(date +%s)
in_image python -c "
from cli.local_services import wait_serving
from common.health import health_status
wait_serving('127.0.0.1:$port', timeout=180)
print('   health:', health_status('127.0.0.1:$port'))
" || { echo "teacher never reached SERVING; its log:"; cat "$work/teacher.log"; exit 1; }
echo "   SERVING after $(($(date +%s) - start)) s"
kill -TERM "$server"
wait "$server" || true
server=""

echo "== 3. montessori run --config /app/configs/tiny.yaml (a tiny loop, artifacts under /tmp)"
start=$(date +%s)
timeout "$loop_timeout" chroot --userspec=10001:10001 "$root" /usr/bin/env -i "${image_env[@]}" HOME=/tmp/smoke \
  MONTESSORI_MODELS_DIR=/tmp/smoke/models MONTESSORI_TORCH_THREADS=1 MONTESSORI_LOG_JSON=0 \
  MONTESSORI_ARTIFACTS_DIR=/tmp/smoke/artifacts \
  /bin/sh -c 'cd /tmp/smoke && exec montessori run --config /app/configs/tiny.yaml --no-progress --report /tmp/smoke/report' \
  > "$work/loop.log" 2>&1 || { echo "the tiny loop failed; the end of its log:"; tail -n 40 "$work/loop.log"; exit 1; }
tail -n 15 "$work/loop.log"
echo "   loop finished in $(($(date +%s) - start)) s; report: $(cd "$work/smoke/report" && ls | tr '\n' ' ')"
echo "image smoke test passed: $image"
