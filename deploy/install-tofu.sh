#!/bin/sh
# Install one OpenTofu release binary, refusing anything whose SHA256 is not the pinned one.
#
# Usage: install-tofu.sh <arch> <dest-dir>
#   <arch>  amd64 or arm64 (Docker's TARGETARCH)
# Environment:
#   TOFU_VERSION         e.g. 1.10.6
#   TOFU_SHA256_AMD64    SHA256 of tofu_<version>_linux_amd64.zip
#   TOFU_SHA256_ARM64    SHA256 of tofu_<version>_linux_arm64.zip
#   TOFU_RELEASES_URL    where releases live (default: GitHub); the tests point it at file://
#
# It lives in a script rather than inline in the Dockerfile so tests/test_deploy_artifacts.py can
# run it and prove that an empty or wrong checksum stops the build instead of being skipped.
# Only POSIX sh, sha256sum and python3 are used: python:3.11-slim has no curl or unzip, and adding
# them just to fetch one file would grow the attack surface of the build stage.
set -eu

arch="${1:?usage: install-tofu.sh <amd64|arm64> <dest-dir>}"
dest="${2:?usage: install-tofu.sh <amd64|arm64> <dest-dir>}"
version="${TOFU_VERSION:?TOFU_VERSION is not set}"
releases="${TOFU_RELEASES_URL:-https://github.com/opentofu/opentofu/releases/download}"

case "$arch" in
  amd64) expected="${TOFU_SHA256_AMD64:-}" ;;
  arm64) expected="${TOFU_SHA256_ARM64:-}" ;;
  *)
    echo "install-tofu: unsupported architecture '$arch' (amd64 or arm64)" >&2
    exit 1
    ;;
esac

# An empty checksum must stop the build: installing an unverified engine binary would hand
# whoever controls the download every cloud credential runbot passes to templates.
if [ -z "$expected" ]; then
  echo "install-tofu: no SHA256 for tofu ${version} linux_${arch}." >&2
  echo "  Take it from tofu_${version}_SHA256SUMS on the release page and pass" >&2
  echo "  --build-arg TOFU_SHA256_$(echo "$arch" | tr 'a-z' 'A-Z')=<sha256>." >&2
  exit 1
fi

zip="tofu_${version}_linux_${arch}.zip"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "${releases}/v${version}/${zip}" "${work}/${zip}" <<'PY'
import sys
import urllib.request

url, target = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url, timeout=120) as response, open(target, "wb") as out:
    while chunk := response.read(1 << 20):
        out.write(chunk)
PY

# sha256sum -c exits non-zero on a mismatch and on a malformed checksum line alike.
(cd "$work" && printf '%s  %s\n' "$expected" "$zip" | sha256sum -c -)

python3 -m zipfile -e "${work}/${zip}" "${work}/unpacked"
mkdir -p "$dest"
# zipfile does not keep the executable bit; install sets it.
install -m 0755 "${work}/unpacked/tofu" "${dest}/tofu"
echo "install-tofu: installed OpenTofu ${version} (linux_${arch}) to ${dest}/tofu"
