#!/usr/bin/env bash
# A CPU Vulkan path for SAPIEN (ManiSkill2) on machines without a GPU driver (docs/design.md §2).
# SAPIEN 2 opens a Vulkan device even for state observations. Without a GPU that device is Mesa's
# lavapipe, which needs Mesa >= 25 (bookworm has 22.3: "Cannot find a suitable rendering device"),
# plus the project's layer (scripts/vulkan_layer/) that declares VK_KHR_external_semaphore_fd,
# the one extension SAPIEN requests and lavapipe lacks.
# Idempotent: prints a line per change, nothing when everything is in place, and nothing at all on
# a machine with a GPU driver. LDMPC_SKIP_VULKAN=1 skips it (DMC/MetaWorld/MyoSuite do not need it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${LDMPC_SKIP_VULKAN:-0}" = 1 ] && exit 0

MIN_MESA=25
PACKAGES=(libvulkan1 libvulkan-dev gcc mesa-vulkan-drivers)
ICD_DIRS=(/etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d /etc/xdg/vulkan/icd.d
          "$HOME/.local/share/vulkan/icd.d")

fail() {
  echo "[setup] ManiSkill2 without a GPU: $* (or skip this step: LDMPC_SKIP_VULKAN=1 make setup)" >&2
  exit 1
}

# A GPU driver: a Vulkan ICD manifest whose library is not one of Mesa's libvulkan_<driver>.so
# (lavapipe and friends), among the files the loader reads (VK_DRIVER_FILES / VK_ICD_FILENAMES
# when set). ldmpc/envs/maniskill2.py applies the same rule.
has_gpu_driver() {
  local f lib files
  if [ -n "${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-}}" ]; then
    IFS=: read -r -a files <<<"${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-}}"
  else
    files=()
    for f in "${ICD_DIRS[@]}"; do files+=("$f"/*.json); done
  fi
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    lib=$(sed -n 's/.*"library_path"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
    lib=${lib%%$'\n'*}
    case "$(basename "${lib:-x}")" in libvulkan_*) ;; *) return 0 ;; esac
  done
  return 1
}
has_gpu_driver && exit 0

installed_version() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" {print $2}'; }
mesa_new_enough() { dpkg --compare-versions "${1:-0}" ge "$MIN_MESA"; }

packages_ok() {
  local p
  for p in "${PACKAGES[@]}"; do [ -n "$(installed_version "$p")" ] || return 1; done
  mesa_new_enough "$(installed_version mesa-vulkan-drivers)"
}

# The suite line "<codename>-backports", reusing the URI and Signed-By of the existing Debian
# source (deb822 debian.sources, else a one-line sources.list entry): no mirror is hard-coded.
add_backports_source() {
  local codename=$1 file=/etc/apt/sources.list.d/ldmpc-$1-backports.sources uri="" key=""
  if grep -rqsE --include="*.list" --include="*.sources" --include=sources.list \
      "^[^#]*[[:space:]]$codename-backports([[:space:]]|$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    read -r uri key < <(awk -v want="$codename" '
      function flush() { if (hit && uri != "") { print uri, (key == "" ? "-" : key); found = 1; exit } }
      /^[[:space:]]*$/ { flush(); hit = 0; uri = ""; key = ""; next }
      /^URIs:/ { uri = $2 }
      /^Signed-By:/ { key = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) hit = 1 }
      END { if (!found) flush() }' /etc/apt/sources.list.d/debian.sources) || true
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    read -r uri key < <(awk -v want="$codename" '
      $1 == "deb" { key = "-"; i = 2
        if ($2 ~ /^\[/) { for (; i <= NF; i++) { if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) }
                                                  if ($i ~ /\]$/) { i++; break } } }
        if ($(i + 1) == want) { print $i, key; exit } }' /etc/apt/sources.list) || true
  fi
  [ -n "$uri" ] || fail "no Debian '$codename' apt source found to derive $codename-backports from; add $codename-backports to apt yourself"
  case "$key" in -|/*) ;; *) fail "the Debian '$codename' apt source embeds its key; add $codename-backports to apt yourself" ;; esac
  {
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: $codename-backports"
    echo "Components: main"
    [ "$key" != "-" ] && echo "Signed-By: $key"
  } > "$file"
  echo "[setup] added apt source $file ($codename-backports from $uri)"
  apt-get update -qq
}

install_packages() {
  command -v apt-get >/dev/null || fail "apt-get is not available; install ${PACKAGES[*]} (Mesa >= $MIN_MESA lavapipe) yourself"
  [ "$(id -u)" = 0 ] || fail "needs root to install ${PACKAGES[*]} (Mesa >= $MIN_MESA); run: sudo bash scripts/vulkan_setup.sh"
  local codename candidate target=()
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  apt-get update -qq
  candidate=$(apt-cache policy mesa-vulkan-drivers | awk '/Candidate:/ {print $2}')
  if ! mesa_new_enough "$candidate"; then
    [ -n "$codename" ] || fail "cannot read VERSION_CODENAME from /etc/os-release"
    add_backports_source "$codename"
    target=(-t "$codename-backports")
  fi
  echo "[setup] apt-get install ${target[*]} ${PACKAGES[*]} (Vulkan on the CPU for SAPIEN)"
  # (apt's "debconf: delaying package configuration" note is noise on minimal images)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${target[@]}" "${PACKAGES[@]}" >/dev/null \
    2> >(grep -v '^debconf: delaying package configuration' >&2)
  local version
  version=$(installed_version mesa-vulkan-drivers)
  mesa_new_enough "$version" || fail "mesa-vulkan-drivers $version was installed, but lavapipe needs >= $MIN_MESA"
  echo "[setup] mesa-vulkan-drivers $version, libvulkan1 $(installed_version libvulkan1)"
}

if ! command -v dpkg-query >/dev/null; then
  fail "not a Debian system; install the Vulkan loader, its headers, gcc and Mesa >= $MIN_MESA lavapipe yourself"
fi
packages_ok || install_packages
bash scripts/vulkan_layer/build.sh
