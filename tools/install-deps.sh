#!/usr/bin/env bash
# Installs what building, testing and running gst-cobra need on Debian 12 (as root, or through
# sudo). Does nothing (one dpkg-query) when everything is already there.
#
# Build and test tools are listed here; everything used at run time (GStreamer elements, Python
# modules, typelibs, programs) is listed with its package in tools/gst-deps.txt, which
# tests/check_elements.sh checks, so that a package forgotten here fails a test by name.
set -euo pipefail
cd "$(dirname "$0")"
packages=(
  build-essential meson ninja-build pkg-config
  libglib2.0-dev libopenblas-openmp-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  valgrind clang libclang-rt-14-dev libomp-14-dev
)
# the package column of gst-deps.txt
mapfile -t -O ${#packages[@]} packages < <(awk '!/^#/ && NF >= 3 && $1 != "not-element" { print $3 }' \
  gst-deps.txt | sort -u)
mapfile -t missing < <(comm -23 <(printf '%s\n' "${packages[@]}" | sort -u) \
  <(dpkg-query -W -f='${Package} ${Status}\n' 2>/dev/null | awk '/ install ok installed$/ { print $1 }' |
    sort -u))
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
