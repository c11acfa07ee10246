{
  # sanitize: "" (normal build), "address" (AddressSanitizer + UndefinedBehaviorSanitizer)
  # or "thread" (ThreadSanitizer). Set by `node-gyp rebuild --sanitize=address`, which
  # scripts/sanitize.js runs in a build directory of its own (build-sanitize/).
  # werror: "on" when the environment has DAXMAP_WERROR=1 (.ci/run sets it): every
  # compiler warning is an error. Off by default, so that a user's newer compiler
  # cannot fail an install over a new warning.
  "variables": {"sanitize%": "", "werror%": "<!(node -p \"process.env.DAXMAP_WERROR === '1' ? 'on' : 'off'\")"},
  "targets": [
    {
      "target_name": "daxmap",
      "sources": [
        "native/uffd.cc",
        "native/region.cc",
        "native/device.cc",
        "native/channel.cc",
        "native/agent.cc",
        "native/socket_channel.cc",
        "native/binding/addon.cc",
        "native/binding/net_binding.cc",
        "native/binding/common.cc",
        "native/binding/region_binding.cc",
        "native/binding/device_binding.cc",
        "native/binding/agent_binding.cc",
        "native/binding/socket_binding.cc",
        "native/binding/layout_binding.cc"
      ],
      "include_dirs": ["native"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++20", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-O2"],
      "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"],
      "ldflags": ["-pthread"],
      "libraries": ["-ldl"],
      "conditions": [
        ["werror=='on'", {"cflags_cc": ["-Werror"]}],
        ["sanitize=='address'", {
          "cflags_cc": ["-fsanitize=address,undefined,float-cast-overflow,float-divide-by-zero", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"],
          "cflags_cc!": ["-O2", "-O3"],
          "ldflags": ["-fsanitize=address,undefined"]
        }],
        ["sanitize=='thread'", {
          "cflags_cc": ["-fsanitize=thread", "-fno-omit-frame-pointer", "-g", "-O1"],
          "cflags_cc!": ["-O2", "-O3"],
          "ldflags": ["-fsanitize=thread"]
        }]
      ]
    }
  ]
}
