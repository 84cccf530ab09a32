#!/usr/bin/env bash
# Installs the Debian packages memsleep builds and tests with. Idempotent:
# installs only what is missing. Runs apt-get through sudo when not root.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libcmocka-dev libjansson-dev libmicrohttpd-dev
      libcurl4-openssl-dev python3 python3-numpy)
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
