#!/usr/bin/env bash
# Build the project's Vulkan layer (see ldmpc_lavapipe_layer.c) into build/vulkan_layer/ (or
# $LDMPC_VULKAN_LAYER_DIR): the shared library plus its manifest. ldmpc/envs/maniskill2.py loads it
# from there as an explicit layer. Rebuilds only when this folder's sources change (stamp = hash);
# the library is written under a temporary name and renamed, so a running process never loads a
# half-written file.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=scripts/vulkan_layer
out=${LDMPC_VULKAN_LAYER_DIR:-build/vulkan_layer}
lib=libVkLayer_ldmpc_lavapipe.so
manifest=VkLayer_ldmpc_lavapipe.json
key=$(cat "$src/ldmpc_lavapipe_layer.c" "$src/$manifest" "$src/build.sh" | sha256sum | cut -d' ' -f1)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$key" ] && [ -f "$out/$lib" ] && [ -f "$out/$manifest" ]; then
  exit 0
fi
if [ ! -f /usr/include/vulkan/vk_layer.h ]; then
  echo "[setup] cannot build the Vulkan layer: /usr/include/vulkan/vk_layer.h is missing (install libvulkan-dev)" >&2
  exit 1
fi
command -v gcc >/dev/null || { echo "[setup] cannot build the Vulkan layer: gcc is missing (install gcc)" >&2; exit 1; }
mkdir -p "$out"
gcc -std=c11 -O2 -g0 -Wall -Wextra -fPIC -shared -fvisibility=hidden -pthread \
  -o "$out/.$lib.tmp" "$src/ldmpc_lavapipe_layer.c"
cp "$src/$manifest" "$out/.$manifest.tmp"
mv -f "$out/.$lib.tmp" "$out/$lib"
mv -f "$out/.$manifest.tmp" "$out/$manifest"
echo "$key" > "$out/.stamp"
echo "[setup] built Vulkan layer VK_LAYER_LDMPC_lavapipe -> $out/$lib"
