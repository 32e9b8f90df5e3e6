#!/usr/bin/env bash
# Installs the system programs the tests drive for real: redis-server (shared cache tests),
# promtool (alert rules), kubectl (kustomize rendering), wrk (the edge benchmark's load client),
# nginx (the reverse proxy the reliability suite puts in front of the service) and a headless
# browser with its WebDriver, chromium and chromedriver (the web page's test, tests/test_web_page.py).
# Debian packages; needs root.
# Installs only what is missing, so a machine that has them is left untouched.
set -euo pipefail
declare -A package_of=([redis-server]=redis-server [promtool]=prometheus [kubectl]=kubectl [wrk]=wrk [nginx]=nginx)
missing=()
for program in "${!package_of[@]}"; do
  # nginx lives in /usr/sbin, which a non-root PATH may lack
  command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("${package_of[$program]}")
done

# Any Chromium-family browser with a chromedriver will do (the test pairs them by version). GitHub's Ubuntu
# runners have Google Chrome and its chromedriver (/usr/bin/chromedriver, $CHROMEWEBDRIVER; sudo drops that
# variable, hence the fixed path too), and Ubuntu's chromium package is only a snap shim: install Debian's
# chromium and chromium-driver only when no browser that runs (`--version`: not a shim) and no driver are there.
has_browser() {
  local browser
  for browser in "${CHROME_BIN:-}" chromium chromium-browser google-chrome google-chrome-stable; do
    [ -n "$browser" ] && command -v "$browser" >/dev/null 2>&1 && "$browser" --version >/dev/null 2>&1 && return 0
  done
  return 1
}
has_driver() {
  local driver
  for driver in "${CHROMEDRIVER:-}" "${CHROMEWEBDRIVER:+$CHROMEWEBDRIVER/chromedriver}" \
      /usr/local/share/chromedriver-linux64/chromedriver "$(command -v chromedriver 2>/dev/null || true)"; do
    [ -n "$driver" ] && [ -x "$driver" ] && return 0
  done
  return 1
}
has_browser && has_driver || missing+=(chromium chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install_system_deps: missing ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install_system_deps: installing ${missing[*]}" >&2
apt-get update -qq
# The prometheus and nginx packages would start servers (nginx on port 80, every address); tests only need
# the binaries and start their own on 127.0.0.1. A policy-rc.d that says no (101) stops any start during the
# install, unless the machine has its own policy.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
