/*
 * VK_LAYER_LDMPC_lavapipe: a pass-through Vulkan layer that lets SAPIEN 2 (ManiSkill2) create its
 * device on Mesa's lavapipe, the CPU Vulkan driver used on machines without a GPU.
 *
 * Why: SAPIEN always enables VK_KHR_external_semaphore_fd (for CUDA interop it never uses with
 * state observations), and lavapipe does not offer it, so vkCreateDevice fails with
 * VK_ERROR_EXTENSION_NOT_PRESENT. The layer's manifest declares that device extension, which
 * makes the loader accept the request; vkCreateDevice below then removes every extension the
 * driver does not report before calling down, so the driver never sees it. Nothing else changes.
 *
 * Written against the loader's layer interface version 2: the loader negotiates through the one
 * exported symbol, and dispatch is resolved with the VkLayer*CreateInfo link chains. Every
 * next-layer function the layer calls itself is resolved right after the instance or device is
 * created, never lazily at call time (lazy lookups during teardown recursed or crashed).
 * Objects are found by their dispatch key (the loader's dispatch-table pointer stored at the start
 * of every dispatchable handle; a VkPhysicalDevice shares its VkInstance's key).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vk_layer.h>
#include <vulkan/vulkan.h>

#define LAYER_NAME "VK_LAYER_LDMPC_lavapipe"
#define EXPORT __attribute__((visibility("default")))

typedef struct Instance {
  void *key;
  VkInstance handle;
  PFN_vkGetInstanceProcAddr next_gipa;
  PFN_vkDestroyInstance next_destroy;
  PFN_vkEnumerateDeviceExtensionProperties next_enum_device_ext;
  struct Instance *link;
} Instance;

typedef struct Device {
  void *key;
  PFN_vkGetDeviceProcAddr next_gdpa;
  PFN_vkDestroyDevice next_destroy;
  struct Device *link;
} Device;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Instance *instances;
static Device *devices;

static void *dispatch_key(const void *handle) { return *(void *const *)handle; }

static void instance_add(Instance *item) {
  pthread_mutex_lock(&lock);
  item->link = instances;
  instances = item;
  pthread_mutex_unlock(&lock);
}

/* The instance with this key; with a single live instance that one (a safe fallback should a
 * loader ever hand out physical devices with their own key). */
static Instance *instance_find(void *key) {
  pthread_mutex_lock(&lock);
  Instance *found = NULL;
  for (Instance *it = instances; it; it = it->link)
    if (it->key == key) found = it;
  if (!found && instances && !instances->link) found = instances;
  pthread_mutex_unlock(&lock);
  return found;
}

static Instance *instance_remove(void *key) {
  pthread_mutex_lock(&lock);
  Instance **slot = &instances;
  while (*slot && (*slot)->key != key) slot = &(*slot)->link;
  Instance *found = *slot;
  if (found) *slot = found->link;
  pthread_mutex_unlock(&lock);
  return found;
}

static void device_add(Device *item) {
  pthread_mutex_lock(&lock);
  item->link = devices;
  devices = item;
  pthread_mutex_unlock(&lock);
}

static Device *device_find(void *key, int remove) {
  pthread_mutex_lock(&lock);
  Device **slot = &devices;
  while (*slot && (*slot)->key != key) slot = &(*slot)->link;
  Device *found = *slot;
  if (found && remove) *slot = found->link;
  pthread_mutex_unlock(&lock);
  return found;
}

/* The loader's link entry in a create-info pNext chain (instance or device; same layout head). */
static void *find_link_info(const void *chain, VkStructureType type) {
  for (const VkBaseInStructure *it = chain; it; it = it->pNext) {
    if (it->sType != type) continue;
    const VkLayerDeviceCreateInfo *info = (const VkLayerDeviceCreateInfo *)it;
    if (info->function == VK_LAYER_LINK_INFO) return (void *)it;
  }
  return NULL;
}

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateInstance(const VkInstanceCreateInfo *info,
                                                           const VkAllocationCallbacks *alloc,
                                                           VkInstance *out) {
  VkLayerInstanceCreateInfo *link =
      find_link_info(info->pNext, VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO);
  if (!link || !link->u.pLayerInfo) return VK_ERROR_INITIALIZATION_FAILED;
  PFN_vkGetInstanceProcAddr next_gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
  link->u.pLayerInfo = link->u.pLayerInfo->pNext; /* the next layer reads its own entry */
  PFN_vkCreateInstance next_create =
      (PFN_vkCreateInstance)next_gipa(VK_NULL_HANDLE, "vkCreateInstance");
  if (!next_create) return VK_ERROR_INITIALIZATION_FAILED;

  Instance *item = calloc(1, sizeof *item);
  if (!item) return VK_ERROR_OUT_OF_HOST_MEMORY;
  VkResult result = next_create(info, alloc, out);
  if (result != VK_SUCCESS) {
    free(item);
    return result;
  }
  item->key = dispatch_key(*out);
  item->handle = *out;
  item->next_gipa = next_gipa;
  item->next_destroy = (PFN_vkDestroyInstance)next_gipa(*out, "vkDestroyInstance");
  item->next_enum_device_ext = (PFN_vkEnumerateDeviceExtensionProperties)next_gipa(
      *out, "vkEnumerateDeviceExtensionProperties");
  if (!item->next_destroy || !item->next_enum_device_ext) {
    if (item->next_destroy) item->next_destroy(*out, alloc);
    free(item);
    return VK_ERROR_INITIALIZATION_FAILED;
  }
  instance_add(item);
  return VK_SUCCESS;
}

static VKAPI_ATTR void VKAPI_CALL layer_DestroyInstance(VkInstance instance,
                                                        const VkAllocationCallbacks *alloc) {
  if (!instance) return;
  Instance *item = instance_remove(dispatch_key(instance));
  if (!item) return;
  item->next_destroy(instance, alloc);
  free(item);
}

static int supported(const char *name, const VkExtensionProperties *props, uint32_t count) {
  for (uint32_t i = 0; i < count; i++)
    if (strcmp(name, props[i].extensionName) == 0) return 1;
  return 0;
}

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateDevice(VkPhysicalDevice physical_device,
                                                         const VkDeviceCreateInfo *info,
                                                         const VkAllocationCallbacks *alloc,
                                                         VkDevice *out) {
  VkLayerDeviceCreateInfo *link =
      find_link_info(info->pNext, VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO);
  Instance *instance = instance_find(dispatch_key(physical_device));
  if (!link || !link->u.pLayerInfo || !instance) return VK_ERROR_INITIALIZATION_FAILED;
  PFN_vkGetInstanceProcAddr next_gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
  PFN_vkGetDeviceProcAddr next_gdpa = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
  link->u.pLayerInfo = link->u.pLayerInfo->pNext;
  PFN_vkCreateDevice next_create =
      (PFN_vkCreateDevice)next_gipa(instance->handle, "vkCreateDevice");
  if (!next_create) return VK_ERROR_INITIALIZATION_FAILED;

  /* Keep only the extensions the layers below and the driver report. */
  uint32_t count = 0;
  VkResult result = instance->next_enum_device_ext(physical_device, NULL, &count, NULL);
  if (result != VK_SUCCESS) return result;
  VkExtensionProperties *props = calloc(count ? count : 1, sizeof *props);
  const char **names = calloc(info->enabledExtensionCount + 1, sizeof *names);
  Device *item = calloc(1, sizeof *item);
  if (!props || !names || !item) {
    result = VK_ERROR_OUT_OF_HOST_MEMORY;
    goto done;
  }
  result = instance->next_enum_device_ext(physical_device, NULL, &count, props);
  if (result != VK_SUCCESS && result != VK_INCOMPLETE) goto done;
  VkDeviceCreateInfo filtered = *info;
  filtered.enabledExtensionCount = 0;
  for (uint32_t i = 0; i < info->enabledExtensionCount; i++) {
    const char *name = info->ppEnabledExtensionNames[i];
    if (supported(name, props, count)) names[filtered.enabledExtensionCount++] = name;
  }
  filtered.ppEnabledExtensionNames = names;

  result = next_create(physical_device, &filtered, alloc, out);
  if (result != VK_SUCCESS) goto done;
  item->key = dispatch_key(*out);
  item->next_gdpa = next_gdpa;
  item->next_destroy = (PFN_vkDestroyDevice)next_gdpa(*out, "vkDestroyDevice");
  if (!item->next_destroy) {
    result = VK_ERROR_INITIALIZATION_FAILED; /* cannot happen with a conformant driver */
    goto done;
  }
  device_add(item);
  item = NULL;
done:
  free(item);
  free(names);
  free(props);
  return result;
}

static VKAPI_ATTR void VKAPI_CALL layer_DestroyDevice(VkDevice device,
                                                      const VkAllocationCallbacks *alloc) {
  if (!device) return;
  Device *item = device_find(dispatch_key(device), 1);
  if (!item) return;
  item->next_destroy(device, alloc);
  free(item);
}

/* The layer's own extension list (answers queries naming this layer); all others go down. */
static VKAPI_ATTR VkResult VKAPI_CALL layer_EnumerateDeviceExtensionProperties(
    VkPhysicalDevice physical_device, const char *layer_name, uint32_t *count,
    VkExtensionProperties *props) {
  if (layer_name && strcmp(layer_name, LAYER_NAME) == 0) {
    if (!props) {
      *count = 1;
      return VK_SUCCESS;
    }
    if (*count < 1) return VK_INCOMPLETE;
    memset(props, 0, sizeof *props);
    strcpy(props->extensionName, VK_KHR_EXTERNAL_SEMAPHORE_FD_EXTENSION_NAME);
    props->specVersion = 1;
    *count = 1;
    return VK_SUCCESS;
  }
  Instance *instance = instance_find(dispatch_key(physical_device));
  if (!instance) return VK_ERROR_INITIALIZATION_FAILED;
  return instance->next_enum_device_ext(physical_device, layer_name, count, props);
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL layer_GetDeviceProcAddr(VkDevice device,
                                                                        const char *name);

/* Functions this layer implements; NULL for everything it only forwards. */
static PFN_vkVoidFunction own_function(const char *name) {
  static const struct {
    const char *name;
    PFN_vkVoidFunction fn;
  } table[] = {
      {"vkCreateInstance", (PFN_vkVoidFunction)layer_CreateInstance},
      {"vkDestroyInstance", (PFN_vkVoidFunction)layer_DestroyInstance},
      {"vkCreateDevice", (PFN_vkVoidFunction)layer_CreateDevice},
      {"vkDestroyDevice", (PFN_vkVoidFunction)layer_DestroyDevice},
      {"vkEnumerateDeviceExtensionProperties",
       (PFN_vkVoidFunction)layer_EnumerateDeviceExtensionProperties},
      {"vkGetDeviceProcAddr", (PFN_vkVoidFunction)layer_GetDeviceProcAddr},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(name, table[i].name) == 0) return table[i].fn;
  return NULL;
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL layer_GetInstanceProcAddr(VkInstance instance,
                                                                          const char *name) {
  if (strcmp(name, "vkGetInstanceProcAddr") == 0)
    return (PFN_vkVoidFunction)layer_GetInstanceProcAddr;
  PFN_vkVoidFunction own = own_function(name);
  if (own || !instance) return own;
  Instance *item = instance_find(dispatch_key(instance));
  return item ? item->next_gipa(instance, name) : NULL;
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL layer_GetDeviceProcAddr(VkDevice device,
                                                                        const char *name) {
  if (strcmp(name, "vkGetDeviceProcAddr") == 0) return (PFN_vkVoidFunction)layer_GetDeviceProcAddr;
  if (strcmp(name, "vkDestroyDevice") == 0) return (PFN_vkVoidFunction)layer_DestroyDevice;
  if (!device) return NULL;
  Device *item = device_find(dispatch_key(device), 0);
  return item ? item->next_gdpa(device, name) : NULL;
}

EXPORT VKAPI_ATTR VkResult VKAPI_CALL
vkNegotiateLoaderLayerInterfaceVersion(VkNegotiateLayerInterface *version) {
  if (!version || version->sType != LAYER_NEGOTIATE_INTERFACE_STRUCT) {
    return VK_ERROR_INITIALIZATION_FAILED;
  }
  if (version->loaderLayerInterfaceVersion < 2) return VK_ERROR_INITIALIZATION_FAILED;
  version->loaderLayerInterfaceVersion = 2;
  version->pfnGetInstanceProcAddr = layer_GetInstanceProcAddr;
  version->pfnGetDeviceProcAddr = layer_GetDeviceProcAddr;
  version->pfnGetPhysicalDeviceProcAddr = NULL;
  return VK_SUCCESS;
}
