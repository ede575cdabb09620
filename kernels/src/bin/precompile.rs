//! Compile every kernel family for one architecture into an on-disk kernel cache, ahead of time:
//! `cargo run --release -p vlm4vla-kernels --bin precompile -- DIR [ARCH]` (ARCH defaults to
//! `sm_90a`). A process on the GPU machine with `VLM4VLA_KERNEL_CACHE=DIR` then loads the
//! compiled kernels instead of running NVRTC, when its NVRTC has the same major.minor version
//! (the cache key leaves out machine paths; see `compile::cache_key`).

use std::path::PathBuf;
use std::time::Instant;
use vlm4vla_kernels::{Compiler, KERNELS};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: precompile DIR [ARCH]");
        std::process::exit(2);
    };
    let arch = args.next().unwrap_or_else(|| "sm_90a".to_string());
    let mut compiler = match Compiler::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("precompile: {e}");
            std::process::exit(1);
        }
    };
    compiler.set_disk_cache(Some(PathBuf::from(&dir)));
    let (major, minor) = compiler.nvrtc().version();
    println!("NVRTC {major}.{minor}, headers {}, arch {arch}, cache {dir}", compiler.include().display());
    let mut failed = 0;
    for k in KERNELS {
        let t = Instant::now();
        match compiler.compile(k, &arch) {
            Ok(c) if c.cubin.is_some() => println!(
                "{:<16} {:>7.1} s  {} B cubin",
                k.family,
                t.elapsed().as_secs_f64(),
                c.cubin.as_ref().map_or(0, Vec::len)
            ),
            Ok(_) => {
                println!("{:<16} no cubin for {arch}", k.family);
                failed += 1;
            }
            Err(e) => {
                println!("{:<16} FAILED: {e}", k.family);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
