#!/usr/bin/env bash
# Installs the Debian packages memsleep builds and tests with. Idempotent:
# installs only what is missing. Runs apt-get through sudo when not root.
set -euo pipefail
# clang and libclang-rt-14-dev (libFuzzer's runtime) build the fuzz targets;
# python3-venv, -pip, -setuptools and -wheel let the tests pip-install the
# Python package offline.
pkgs=(build-essential cmake pkg-config libcmocka-dev libjansson-dev libmicrohttpd-dev
      libcurl4-openssl-dev python3 python3-numpy clang libclang-rt-14-dev
      python3-venv python3-pip python3-setuptools python3-wheel)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
