{
  "targets": [
    {
      "target_name": "native_kernels",
      "sources": ["src/addon.cc", "src/decoder.cc", "src/elementwise.cc", "src/gemm.cc", "src/pool.cc", "src/sampler.cc", "src/train.cc", "src/transpose.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions", "-O2"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=c++17", "-O2"],
      "cflags_cc": ["-std=gnu++20", "-O3", "-march=native", "-ffp-contract=fast", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ]
}
