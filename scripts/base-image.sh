#!/usr/bin/env bash
# Builds a Python 3.11 base image from Debian bookworm packages, for machines that reach a Debian
# mirror but no container registry (so `python:3.11-slim-bookworm` cannot be pulled). The result
# is passed to the Dockerfile as PYTHON_IMAGE (`make images PYTHON_IMAGE=localhost/python-bookworm:3.11`,
# which runs this script when the image is missing).
#
#   scripts/base-image.sh [IMAGE] [MIRROR]
#
# IMAGE defaults to localhost/python-bookworm:3.11; MIRROR to the first Debian mirror in
# /etc/apt/sources.list* (else http://deb.debian.org/debian). Needs root, debootstrap and
# docker or podman (CONTAINER overrides which). Takes about 2 minutes.
set -euo pipefail

image=${1:-localhost/python-bookworm:3.11}
mirror=${2:-}
container=${CONTAINER:-$(command -v docker || command -v podman || true)}
[[ -n "$container" ]] || { echo "base-image.sh: neither docker nor podman found" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base-image.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

if [[ -z "$mirror" ]]; then
  # The first bookworm mirror this machine's apt already uses (deb822 URIs: or one-line deb entries).
  mirror=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | grep -o -E 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# minbase: essential packages only (no apt recommends); python3-venv brings ensurepip's wheels.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
# What a python:*-slim image also drops: apt lists and caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
# `python`, as in the python:* images.
ln -sf python3 "$root/usr/bin/python"
tar -C "$root" -c . | "$container" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image"
echo "built $image"
