#!/usr/bin/env bash
# System libraries MuJoCo rendering needs (docs/design.md §2). Installs only what is missing, only as root
# on Debian; otherwise prints the apt-get line a user must run. Then the CPU Vulkan path SAPIEN
# (ManiSkill2) needs on machines without a GPU driver: scripts/vulkan_setup.sh.
set -euo pipefail
declare -A lib_pkg=(
  [libEGL.so.1]=libegl1
  [libGL.so.1]=libgl1
  [libOSMesa.so.8]=libosmesa6
)
missing=()
# One ldconfig call, grepped as a string (`ldconfig -p | grep -q` under pipefail can fail by
# SIGPIPE); its entries start with a tab.
cache=$(ldconfig -p)
for lib in "${!lib_pkg[@]}"; do
  grep -q "^[[:space:]]*$lib " <<<"$cache" || missing+=("${lib_pkg[$lib]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] missing system packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
  fi
fi
bash "$(dirname "$0")/vulkan_setup.sh"
