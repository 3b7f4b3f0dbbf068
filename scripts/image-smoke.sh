#!/usr/bin/env bash
# Smoke test of built images without running a container (`make image-smoke`): on machines whose sandbox
# refuses OCI runtimes (crun/runc), each image's root filesystem is mounted (podman image mount; with docker,
# exported to a folder) and its programs run under chroot as the image's user 10001, with the image's
# environment. Every image (KIND: cpu, cuda or vllm):
#   1. the entrypoint: `montessori --help`;
#   2. the imports: torch (its version, its CUDA version: none in cpu, one in cuda and vllm; torch.cuda.is_available()
#      must be False, no GPU being visible here), transformers, peft, trl (cpu, cuda) and vllm with its engine's
#      `from vllm import LLM, SamplingParams` (vllm);
#   3. a GPU service started without a GPU (`serve influence --device cuda`; vllm: `serve teacher --device cuda`,
#      `--device` being the transformers backend's: vLLM picks its own device) exits non-zero at once with one
#      line naming the device setting, no traceback.
# The cpu and cuda images (the same services) also:
#   4. the teacher service on loopback (plaintext, --insecure) with the tiny teacher preloaded reaches SERVING;
# and the cpu image (the cpu-dev overlay's, which runs on CPU):
#   5. a tiny loop: `montessori run --config /app/configs/tiny.yaml` (artifacts and report under /tmp);
#      SMOKE_LOOP=0 leaves it out.
# The tiny models (models/tiny-*, built by `make setup`) are copied into the chroot's /tmp, a host
# folder bind-mounted there, beside a link to the image's /app/data. Needs root (chroot, mount).
#
#   scripts/image-smoke.sh [KIND=]IMAGE ...   (default cpu=ghcr.io/montessori-dev/montessori:0.1.0-cpu;
#                                             a bare IMAGE is a cpu one)
# An image that is not built is skipped with a line (`make image-smoke` names all three); none built fails.
# SMOKE_OUT=<dir>: each image's results as files under <dir>/<KIND>/ (bench/images.py reads them).
set -euo pipefail

container=${CONTAINER:-$(command -v podman || command -v docker)}
repo=$(cd "$(dirname "$0")/.." && pwd)
port=${SMOKE_PORT:-50151}
loop_timeout=${SMOKE_LOOP_TIMEOUT:-900}
run_loop=${SMOKE_LOOP:-1}
(($# > 0)) || set -- "cpu=ghcr.io/montessori-dev/montessori:0.1.0-cpu"

work=""
root=""
image=""
exported=""
mounted=()
server=""
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  mounted=()
  if [[ -n "$exported" ]]; then rm -rf "$exported"; elif [[ -n "$root" ]]; then "$container" image unmount "$image" >/dev/null || true; fi
  exported=""
  root=""
  if [[ -n "$work" ]]; then rm -rf "$work"; fi
  work=""
}
trap cleanup EXIT

in_image() {
  chroot --userspec=10001:10001 "$root" /usr/bin/env -i "${image_env[@]}" HOME=/tmp/smoke \
    MONTESSORI_MODELS_DIR=/tmp/smoke/models MONTESSORI_TORCH_THREADS=1 MONTESSORI_LOG_JSON=0 \
    /bin/sh -c 'cd /tmp/smoke && exec "$@"' sh "$@"
}

smoke() {
  local kind=$1 out=$2
  work=$(mktemp -d)
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
  if [[ "$kind" != vllm ]]; then
    cp -r "$repo"/models/tiny-teacher "$repo"/models/tiny-student "$work/smoke/models/"
  fi
  # The config's relative paths (models/tiny-*, data/seed.jsonl) resolve in /tmp/smoke: data is the image's.
  ln -s /app/data "$work/smoke/data"
  chown -R 10001:10001 "$work/smoke"

  # The image's ENV (PATH=/opt/venv/bin:..., the offline switches), then the smoke test's settings.
  mapfile -t image_env < <("$container" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep .)

  echo "== 1. montessori --help (the entrypoint)"
  local rc=0
  in_image montessori --help > "$out/help.txt" 2>&1 || rc=$?
  echo "$rc" > "$out/help.rc"
  head -n 5 "$out/help.txt"
  ((rc == 0)) || { echo "montessori --help exited $rc"; return 1; }
  echo "$(in_image id -u):$(in_image id -g)" > "$out/user.txt"
  echo "   user inside: $(cat "$out/user.txt")"

  echo "== 2. imports"
  local modules="torch transformers peft trl" cuda=1
  [[ "$kind" == vllm ]] && modules="torch transformers peft vllm"
  [[ "$kind" == cpu ]] && cuda=0
  in_image python -c '
import importlib, json, sys, time
found, want_cuda = {}, sys.argv[1] == "1"
for name in sys.argv[2:]:
    start = time.monotonic()
    module = importlib.import_module(name)
    found[name] = {"version": module.__version__, "import_s": round(time.monotonic() - start, 1)}
if "vllm" in found:  # the package imports lazily: the engine too
    start = time.monotonic()
    from vllm import LLM, SamplingParams
    found["vllm"]["engine_import_s"] = round(time.monotonic() - start, 1)
import torch
found["torch"].update(cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
print(json.dumps(found))
assert not found["torch"]["cuda_available"], "torch sees a CUDA device: this smoke test expects none"
assert (found["torch"]["cuda"] is not None) == want_cuda, f"torch.version.cuda is {found['"'"'torch'"'"']['"'"'cuda'"'"']}"
' "$cuda" $modules > "$work/imports.out" 2> "$work/imports.err" \
    || { echo "the imports failed:"; tail -n 30 "$work/imports.err" "$work/imports.out"; return 1; }
  tail -n 1 "$work/imports.out" > "$out/imports.json"
  echo "   $(cat "$out/imports.json")"

  echo "== 3. a GPU service without a GPU"
  local service=(montessori serve influence --device cuda)
  [[ "$kind" == vllm ]] && service=(montessori serve teacher --device cuda)
  echo "${service[*]}" > "$out/device.cmd"
  rc=0
  timeout 300 chroot --userspec=10001:10001 "$root" /usr/bin/env -i "${image_env[@]}" HOME=/tmp/smoke \
    MONTESSORI_LOG_JSON=0 /bin/sh -c 'cd /tmp/smoke && exec "$@"' sh "${service[@]}" --insecure \
    --host 127.0.0.1 --port "$port" --artifacts /tmp/smoke/store > "$out/device.out" 2>&1 || rc=$?
  echo "$rc" > "$out/device.rc"
  sed 's/^/   | /' "$out/device.out"
  echo "   exit status $rc"
  if ((rc == 0 || rc == 124)) || [[ "$(grep -c . "$out/device.out")" != 1 ]] || grep -q Traceback "$out/device.out" \
    || ! grep -q -E -e '(^|[^a-z])device\b' "$out/device.out"; then
    echo "expected: a non-zero exit (not the timeout) with one line naming the device setting"
    return 1
  fi

  [[ "$kind" == vllm ]] && return 0
  echo "== 4. montessori serve teacher --insecure on 127.0.0.1:$port (tiny teacher preloaded)"
  in_image montessori serve teacher --insecure --host 127.0.0.1 --port "$port" --metrics-port 0 \
    --artifacts /tmp/smoke/store --preload /tmp/smoke/models/tiny-teacher > "$work/teacher.log" 2>&1 &
  server=$!
  local start
  start=$(date +%s)
  in_image python -c "
from cli.local_services import wait_serving
from common.health import health_status
wait_serving('127.0.0.1:$port', timeout=180)
print('   health:', health_status('127.0.0.1:$port'))
" || { echo "teacher never reached SERVING; its log:"; cat "$work/teacher.log"; return 1; }
  echo "$(($(date +%s) - start))" > "$out/serving.s"
  echo "   SERVING after $(cat "$out/serving.s") s"
  kill -TERM "$server"
  wait "$server" || true
  server=""

  [[ "$kind" == cpu && "$run_loop" == 1 ]] || return 0
  echo "== 5. montessori run --config /app/configs/tiny.yaml (a tiny loop, artifacts under /tmp)"
  start=$(date +%s)
  timeout "$loop_timeout" chroot --userspec=10001:10001 "$root" /usr/bin/env -i "${image_env[@]}" HOME=/tmp/smoke \
    MONTESSORI_MODELS_DIR=/tmp/smoke/models MONTESSORI_TORCH_THREADS=1 MONTESSORI_LOG_JSON=0 \
    MONTESSORI_ARTIFACTS_DIR=/tmp/smoke/artifacts \
    /bin/sh -c 'cd /tmp/smoke && exec montessori run --config /app/configs/tiny.yaml --no-progress --report /tmp/smoke/report' \
    > "$work/loop.log" 2>&1 || { echo "the tiny loop failed; the end of its log:"; tail -n 40 "$work/loop.log"; return 1; }
  tail -n 15 "$work/loop.log"
  echo "$(($(date +%s) - start))" > "$out/loop.s"
  echo "   loop finished in $(cat "$out/loop.s") s; report: $(cd "$work/smoke/report" && ls | tr '\n' ' ')"
}

tested=0
for spec in "$@"; do
  kind=cpu
  image=$spec
  if [[ "$spec" == *=* ]]; then kind=${spec%%=*} image=${spec#*=}; fi
  [[ "$kind" =~ ^(cpu|cuda|vllm)$ ]] || { echo "image-smoke.sh: unknown kind '$kind' (cpu, cuda or vllm)" >&2; exit 2; }
  if ! "$container" image inspect "$image" >/dev/null 2>&1; then
    echo "== $kind: $image is not built, skipped"
    continue
  fi
  echo "==== $kind: $image"
  out=${SMOKE_OUT:+$SMOKE_OUT/$kind}
  out=${out:-$(mktemp -d)}
  mkdir -p "$out"
  smoke "$kind" "$out" || { echo "image smoke test FAILED: $image"; exit 1; }
  [[ -n "${SMOKE_OUT:-}" ]] || rm -rf "$out"
  cleanup
  tested=$((tested + 1))
  echo "image smoke test passed: $image"
done
((tested > 0)) || { echo "image-smoke.sh: none of the images is built (make images)" >&2; exit 1; }
