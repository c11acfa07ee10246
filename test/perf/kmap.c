/*
 * The kernel's own mapping of a file, for the benchmarks' baselines: a tiny Node-API
 * addon (test/perf/kmap.ts compiles it at bench time) that mmaps a file MAP_SHARED or
 * MAP_PRIVATE and hands the memory to JavaScript as an ArrayBuffer. It knows nothing
 * of daxmap: the figures measured through it are the plain kernel's.
 *
 *   map(path, length, private) -> ArrayBuffer   (the file must exist, >= length bytes)
 *   unmap(arrayBuffer)                            (detaches it, then munmap)
 */
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct kmapping {
  void *addr;
  size_t length;
  int unmapped;
};

static napi_value fail(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "kmap: %s: %s", what, strerror(err));
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static void release(struct kmapping *m) {
  if (!m->unmapped) {
    munmap(m->addr, m->length);
    m->unmapped = 1;
  }
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  struct kmapping *m = hint;
  release(m);
  free(m);
}

static napi_value map(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char path[4096];
  size_t pathLen = 0;
  int64_t length = 0;
  bool priv = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &pathLen) != napi_ok ||
      napi_get_value_int64(env, argv[1], &length) != napi_ok || length <= 0 ||
      napi_get_value_bool(env, argv[2], &priv) != napi_ok) {
    napi_throw_type_error(env, NULL, "kmap.map(path: string, length: number > 0, private: boolean)");
    return NULL;
  }
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return fail(env, "open", errno);
  void *addr = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, priv ? MAP_PRIVATE : MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (addr == MAP_FAILED) return fail(env, "mmap", err);
  struct kmapping *m = malloc(sizeof *m);
  if (m == NULL) {
    munmap(addr, (size_t)length);
    return fail(env, "malloc", ENOMEM);
  }
  m->addr = addr;
  m->length = (size_t)length;
  m->unmapped = 0;
  napi_value ab;
  if (napi_create_external_arraybuffer(env, addr, (size_t)length, finalize, m, &ab) != napi_ok) {
    release(m);
    free(m);
    napi_throw_error(env, NULL, "kmap: napi_create_external_arraybuffer failed");
    return NULL;
  }
  /* The mapping record rides on the ArrayBuffer so that unmap() can find it. */
  if (napi_wrap(env, ab, m, NULL, NULL, NULL) != napi_ok) {
    napi_throw_error(env, NULL, "kmap: napi_wrap failed");
    return NULL;
  }
  return ab;
}

static napi_value unmap(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *m = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_remove_wrap(env, argv[0], &m) != napi_ok || m == NULL) {
    napi_throw_type_error(env, NULL, "kmap.unmap(arrayBuffer from kmap.map)");
    return NULL;
  }
  /* munmap, then detach (no JavaScript runs in between, so no view reaches the
     memory once it is gone). The record is freed by the ArrayBuffer's finalizer,
     which may run during the detach: it is not touched after. */
  release(m);
  napi_detach_arraybuffer(env, argv[0]);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"map", NULL, map, NULL, NULL, NULL, napi_default, NULL},
      {"unmap", NULL, unmap, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
