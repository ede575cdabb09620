//! Compiling a kernel family with NVRTC, once per process: results are cached in memory by a hash
//! of the sources, the options and the architecture (NVRTC's version included), and on disk in
//! `$VLM4VLA_KERNEL_CACHE` when that variable names a folder. The key leaves out the machine's
//! paths (`--include-path=`), so kernels compiled on one machine are found on another
//! (`tools/gpu-prepare` ships them with the staged binaries).

use crate::{paths, Error, Kernel, Nvrtc, COMMON};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// One family compiled for one architecture.
#[derive(Debug)]
pub struct Compiled {
    pub family: &'static str,
    /// The NVRTC architecture, e.g. `sm_90a`.
    pub arch: String,
    pub options: Vec<String>,
    pub ptx: String,
    /// The device code for `arch` (present for real `sm_XX` targets).
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log: warnings and, with `ptxas_verbose`, ptxas's resource figures.
    pub log: String,
}

/// ptxas's resource figures for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub symbol: String,
    pub registers: u32,
    /// Static shared memory in bytes.
    pub shared: u64,
    pub stack: u64,
    pub spill_stores: u64,
    pub spill_loads: u64,
}

impl Compiled {
    /// Whether the PTX defines the kernel entry `symbol` (an `extern "C"` kernel keeps its name).
    pub fn has_entry(&self, symbol: &str) -> bool {
        self.ptx.lines().any(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(".visible .entry ").or_else(|| l.strip_prefix(".entry "));
            rest.is_some_and(|r| r.strip_prefix(symbol).is_some_and(|t| t.starts_with('(')))
        })
    }

    /// The per-kernel figures in the ptxas verbose log (empty unless compiled with it).
    pub fn resources(&self) -> Vec<Resources> {
        parse_ptxas(&self.log)
    }
}

/// Parse ptxas `-v` output: `Compiling entry function 'k'`, `Function properties for k`,
/// `N bytes stack frame, N bytes spill stores, N bytes spill loads`, `Used N registers, ... N bytes smem`.
pub fn parse_ptxas(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let quoted = |l: &str| l.split('\'').nth(1).map(str::to_string);
    let number_before = |l: &str, unit: &str| -> Option<u64> {
        let i = l.find(unit)?;
        l[..i].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    let mut current: Option<usize> = None;
    for line in log.lines() {
        const PROPS: &str = "Function properties for ";
        let name = if line.contains("Compiling entry function") {
            quoted(line)
        } else {
            line.find(PROPS).map(|i| line[i + PROPS.len()..].trim().to_string())
        };
        if let Some(name) = name {
            current = Some(match out.iter().position(|r| r.symbol == name) {
                Some(i) => i,
                None => {
                    out.push(Resources { symbol: name, ..Default::default() });
                    out.len() - 1
                }
            });
            continue;
        }
        let Some(i) = current else { continue };
        let r = &mut out[i];
        if line.contains("stack frame") {
            r.stack = number_before(line, " bytes stack frame").unwrap_or(0);
            r.spill_stores = number_before(line, " bytes spill stores").unwrap_or(0);
            r.spill_loads = number_before(line, " bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains(" registers") {
            r.registers = number_before(line, " registers").unwrap_or(0) as u32;
            r.shared = number_before(line, " bytes smem").unwrap_or(0);
        }
    }
    out
}

/// The NVRTC architecture for a device's compute capability: the arch-specific `sm_90a` on
/// Hopper (wgmma and TMA need it), `sm_XY` elsewhere.
pub fn arch_for_capability(major: u32, minor: u32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// NVRTC, the CUDA include folder and the compile cache of this process.
pub struct Compiler {
    nvrtc: Nvrtc,
    include: PathBuf,
    disk: Option<PathBuf>,
    cache: Mutex<HashMap<u64, Arc<Compiled>>>,
}

impl Compiler {
    /// Find and load NVRTC and the CUDA headers (see [`paths`]); the error says what is missing.
    pub fn new() -> Result<Compiler, Error> {
        let include = paths::find_include()?;
        let nvrtc = paths::load_nvrtc()?;
        let disk = std::env::var_os("VLM4VLA_KERNEL_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from);
        Ok(Compiler { nvrtc, include, disk, cache: Mutex::new(HashMap::new()) })
    }

    /// The process-wide compiler, created on first use.
    pub fn global() -> Result<&'static Compiler, Error> {
        static GLOBAL: OnceLock<Result<Compiler, Error>> = OnceLock::new();
        GLOBAL.get_or_init(Compiler::new).as_ref().map_err(Clone::clone)
    }

    /// Use `dir` (or no folder) as the on-disk cache instead of `$VLM4VLA_KERNEL_CACHE`.
    pub fn set_disk_cache(&mut self, dir: Option<PathBuf>) {
        self.disk = dir;
    }

    pub fn nvrtc(&self) -> &Nvrtc {
        &self.nvrtc
    }

    pub fn include(&self) -> &std::path::Path {
        &self.include
    }

    /// The NVRTC options for `kernel` on `arch`.
    pub fn options(&self, kernel: &Kernel, arch: &str, ptxas_verbose: bool) -> Vec<String> {
        compile_options(kernel, arch, &self.include, ptxas_verbose)
    }

    /// `kernel` compiled for `arch` (e.g. `sm_90a`), from the cache when it was compiled before.
    pub fn compile(&self, kernel: &'static Kernel, arch: &str) -> Result<Arc<Compiled>, Error> {
        self.compile_with(kernel, arch, false)
    }

    /// As [`Compiler::compile`], with ptxas's resource figures in the log when `ptxas_verbose`.
    pub fn compile_with(
        &self,
        kernel: &'static Kernel,
        arch: &str,
        ptxas_verbose: bool,
    ) -> Result<Arc<Compiled>, Error> {
        let options = self.options(kernel, arch, ptxas_verbose);
        let key = cache_key(kernel, &options, arch, self.nvrtc.version());
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        let compiled = match self.read_disk(key, kernel, arch, &options) {
            Some(c) => c,
            None => {
                let out = self.nvrtc.compile(kernel.file, kernel.source, &[("common.cuh", COMMON)], &options)?;
                let c = Compiled {
                    family: kernel.family,
                    arch: arch.to_string(),
                    options,
                    ptx: out.ptx,
                    cubin: out.cubin,
                    log: out.log,
                };
                self.write_disk(key, &c);
                c
            }
        };
        let compiled = Arc::new(compiled);
        self.lock().insert(key, compiled.clone());
        Ok(compiled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Compiled>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_disk(&self, key: u64, kernel: &'static Kernel, arch: &str, options: &[String]) -> Option<Compiled> {
        let dir = self.disk.as_ref()?;
        let base = dir.join(cache_entry_stem(kernel.family, arch, key));
        let ptx = std::fs::read_to_string(base.with_extension("ptx")).ok()?;
        Some(Compiled {
            family: kernel.family,
            arch: arch.to_string(),
            options: options.to_vec(),
            ptx,
            cubin: std::fs::read(base.with_extension("cubin")).ok(),
            log: std::fs::read_to_string(base.with_extension("log")).unwrap_or_default(),
        })
    }

    /// Best effort: a cache that cannot be written only costs a recompile next time.
    fn write_disk(&self, key: u64, c: &Compiled) {
        let Some(dir) = self.disk.as_ref() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let base = dir.join(cache_entry_stem(c.family, &c.arch, key));
        let write = |ext: &str, bytes: &[u8]| {
            let tmp = base.with_extension(format!("{ext}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, base.with_extension(ext));
            }
        };
        if let Some(cubin) = &c.cubin {
            write("cubin", cubin);
        }
        write("log", c.log.as_bytes());
        // Written last: its presence marks the entry complete.
        write("ptx", c.ptx.as_bytes());
    }
}

/// The NVRTC options for `kernel` on `arch` with the CUDA headers in `include`.
pub fn compile_options(kernel: &Kernel, arch: &str, include: &std::path::Path, ptxas_verbose: bool) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "-default-device".to_string(),
        format!("--include-path={}", include.display()),
    ];
    if kernel.fast_math {
        o.push("--use_fast_math".to_string());
    }
    if ptxas_verbose {
        o.push("--ptxas-options=-v".to_string());
    }
    o
}

/// The cache key of `kernel` compiled for `arch` with `options` by NVRTC `major.minor`: the kernel's
/// source, the common prelude, the options that change the code (machine paths such as
/// `--include-path=` left out), the architecture and NVRTC's version. The same on every machine,
/// so an on-disk cache filled here is valid on the GPU machine.
pub fn cache_key(kernel: &Kernel, options: &[String], arch: &str, (major, minor): (i32, i32)) -> u64 {
    let semantic: Vec<&str> =
        options.iter().map(String::as_str).filter(|o| !o.starts_with("--include-path=")).collect();
    fnv1a(&[kernel.source, COMMON, &semantic.join("\0"), arch, &format!("nvrtc {major}.{minor}")])
}

/// The file stem of a cache entry in the on-disk cache: `{family}-{arch}-{key:016x}`.
pub fn cache_entry_stem(family: &str, arch: &str, key: u64) -> String {
    format!("{family}-{arch}-{key:016x}")
}

/// 64-bit FNV-1a over the parts, each followed by a separator byte: stable across Rust releases,
/// so the on-disk cache stays valid.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_figures() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'norm_fwd_f32' for 'sm_90a'\n\
            ptxas info    : Function properties for norm_fwd_f32\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'k2' for 'sm_90a'\n\
            ptxas info    : Function properties for k2\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 8 registers, used 0 barriers, 380 bytes cmem[0]\n";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resources {
                symbol: "norm_fwd_f32".into(),
                registers: 40,
                shared: 128,
                stack: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!((r[1].registers, r[1].shared, r[1].spill_loads), (8, 0, 0));
    }

    #[test]
    fn arch_names() {
        assert_eq!(arch_for_capability(9, 0), "sm_90a");
        assert_eq!(arch_for_capability(8, 0), "sm_80");
        assert_eq!(arch_for_capability(8, 9), "sm_89");
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }
}
