//! The on-disk kernel cache's key is the same on every machine: it depends on the sources, the
//! architecture, NVRTC's version and the options that change the code, never on where the CUDA
//! headers live (kernels compiled here are shipped to the GPU machine, `tools/gpu-prepare`).

use std::path::Path;
use vlm4vla_kernels::{cache_key, compile_options, KERNELS};

#[test]
fn key_ignores_the_include_path() {
    for k in KERNELS {
        let here = compile_options(k, "sm_90a", Path::new("/home/me/.cache/cuda-wheels/include"), false);
        let there = compile_options(k, "sm_90a", Path::new("/usr/local/cuda/include"), false);
        assert_ne!(here, there);
        assert_eq!(cache_key(k, &here, "sm_90a", (13, 0)), cache_key(k, &there, "sm_90a", (13, 0)), "{}", k.family);
    }
}

#[test]
fn key_follows_what_changes_the_code() {
    let inc = Path::new("/usr/local/cuda/include");
    let (a, b) = (&KERNELS[0], &KERNELS[1]);
    let key = |k, arch, verbose, v| cache_key(k, &compile_options(k, arch, inc, verbose), arch, v);
    let base = key(a, "sm_90a", false, (13, 0));
    assert_ne!(base, key(b, "sm_90a", false, (13, 0)), "source");
    assert_ne!(base, key(a, "sm_80", false, (13, 0)), "arch");
    assert_ne!(base, key(a, "sm_90a", true, (13, 0)), "options");
    assert_ne!(base, key(a, "sm_90a", false, (13, 1)), "NVRTC minor version");
    assert_ne!(base, key(a, "sm_90a", false, (12, 0)), "NVRTC major version");
}
