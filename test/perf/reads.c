/*
 * Random 8-byte reads over memory JavaScript holds as an ArrayBuffer, in a tight C
 * loop, for the TLB-bound benchmark row (docs/bench.md, row 13): the same loop reads
 * daxmap's mapping and the kernel's, so the figure is the memory system's, not
 * JavaScript's. A tiny Node-API addon (test/perf/reads.ts compiles it at bench time);
 * it knows nothing of daxmap.
 *
 *   randomReads(arrayBuffer, count, seed) -> { ns, sum }
 *     count loads of 8-byte words at indices drawn by xorshift64 from seed (the same
 *     seed reads the same words); ns is the loop's CLOCK_MONOTONIC time, sum (a
 *     BigInt) the words' sum modulo 2^64, so two buffers with the same content give
 *     the same sum.
 */
#include <node_api.h>
#include <stdint.h>
#include <time.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static napi_value random_reads(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  void *data = NULL;
  size_t length = 0;
  int64_t count = 0;
  int64_t seed = 0;
  bool is_ab = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_is_arraybuffer(env, argv[0], &is_ab) != napi_ok || !is_ab ||
      napi_get_arraybuffer_info(env, argv[0], &data, &length) != napi_ok || length < 8 ||
      napi_get_value_int64(env, argv[1], &count) != napi_ok || count <= 0 ||
      napi_get_value_int64(env, argv[2], &seed) != napi_ok) {
    napi_throw_type_error(env, NULL, "reads.randomReads(arrayBuffer of >= 8 bytes, count > 0, seed)");
    return NULL;
  }
  const uint64_t *words = data;
  const uint64_t n = length / 8;
  uint64_t x = (uint64_t)seed * 0x9e3779b97f4a7c15ull | 1;
  uint64_t sum = 0;
  uint64_t t0 = now_ns();
  for (int64_t i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    sum += words[(uint64_t)(((unsigned __int128)x * n) >> 64)];
  }
  uint64_t t1 = now_ns();
  napi_value out, ns, s;
  napi_create_object(env, &out);
  napi_create_double(env, (double)(t1 - t0), &ns);
  napi_create_bigint_uint64(env, sum, &s);
  napi_set_named_property(env, out, "ns", ns);
  napi_set_named_property(env, out, "sum", s);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"randomReads", NULL, random_reads, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
