#!/usr/bin/env bash
# The digest-identical check of a redesign: run the tiny loop in process with a fixed loop id into a
# fresh artifacts folder, then print the sha256 of every file it wrote except the timing-bearing ones
# (manifest.json: duration and code version; state.json, rounds.jsonl, summary.json: durations) and their
# .<name>.sha256 digest sidecars. Run it
# before and after a change on the same machine and diff the two lists: they must be identical.
# It runs `python -m cli.main` from the tree, so the tree's own code runs (the shared .venv's `montessori` script
# imports whichever checkout the venv was installed from).
#   [TREE=checkout] scripts/tiny-digests.sh OUT_LIST [WORK_DIR]
set -euo pipefail
out_list=${1:?usage: scripts/tiny-digests.sh OUT_LIST [WORK_DIR]}
# The same folder before and after: requests carry the artifacts' file:// URIs, so another folder is another
# request digest in every request.json (and the digest sidecars and config.json that name it).
work=${2:-/tmp/montessori-tiny-digests}
root=${TREE:-$(cd "$(dirname "$0")/.." && pwd)}  # TREE: another checkout (e.g. the tree before a change)
rm -rf "$work/artifacts" "$work/report"
mkdir -p "$work"
cd "$root"
nice -n 10 env MONTESSORI_TORCH_THREADS=1 .venv/bin/python -m cli.main run --config configs/tiny.yaml \
  --set loop_id=digest --set artifacts="$work/artifacts" --no-progress --report "$work/report" >"$work/run.log" 2>&1
cd "$work/artifacts"
timed='manifest.json state.json rounds.jsonl summary.json'
skip=(); for name in $timed; do skip+=(! -name "$name" ! -name ".$name.sha256"); done  # and their digest sidecars
find . -type f "${skip[@]}" -print0 \
  | sort -z | xargs -0 sha256sum >"$out_list"
echo "$(wc -l <"$out_list") files hashed into $out_list (artifacts in $work/artifacts)"
