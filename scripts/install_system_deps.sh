#!/usr/bin/env bash
# Installs the system programs the tests drive for real: redis-server (shared cache tests),
# promtool (alert rules), kubectl (kustomize rendering) and wrk (the edge benchmark's load client).
# Debian packages; needs root.
# Installs only what is missing, so a machine that has them is left untouched.
set -euo pipefail
declare -A package_of=([redis-server]=redis-server [promtool]=prometheus [kubectl]=kubectl [wrk]=wrk)
missing=()
for program in "${!package_of[@]}"; do
  command -v "$program" >/dev/null 2>&1 || missing+=("${package_of[$program]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install_system_deps: missing ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install_system_deps: installing ${missing[*]}" >&2
apt-get update -qq
# The prometheus package would start a server; tests only need its promtool binary.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
