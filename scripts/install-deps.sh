#!/usr/bin/env bash
# Installs the Debian 12 packages statetrack needs to build, test and run, if missing.
# Runs apt-get as root, or through sudo when started by another user.
set -euo pipefail

packages=(
  build-essential clang clang-14 libclang-rt-14-dev llvm llvm-14 clang-format clang-tidy
  cmake ninja-build pkgconf ccache
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev libboost-program-options1.81-dev
  libssl-dev openssl libsqlite3-dev sqlite3 libpq-dev postgresql-15 postgresql-client-15
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-pytest python3-requests python3-websockets
  curl ca-certificates wrk
  prometheus
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
