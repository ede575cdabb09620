//! Where NVRTC and the CUDA headers live: explicit environment variables first, then CUDA
//! installs (`CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`), then the `nvidia/cu13` folder of pip
//! wheels (`VLM4VLA_CUDA_WHEELS`, the default wheel cache, Python site-packages).

use crate::Error;
use std::path::{Path, PathBuf};

/// The header every kernel needs; an include folder without it is not a CUDA include folder.
const KEY_HEADER: &str = "cuda_bf16.h";
/// NVRTC library names, newest first.
const NVRTC_NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
/// What to run when nothing is found.
const HINT: &str = "install CUDA 13 (set CUDA_HOME), or the pip wheels: python3 -m pip install --target \
    ~/.cache/vlm4vla/cuda-wheels nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 \
    (then VLM4VLA_CUDA_WHEELS=~/.cache/vlm4vla/cuda-wheels if you chose another folder); \
    VLM4VLA_NVRTC=/path/to/libnvrtc.so.13 and VLM4VLA_CUDA_INCLUDE=/path/to/include override the search";

/// A CUDA root: a folder with `include/` and `lib/` or `lib64/` (a toolkit or a wheel's `cu13`).
fn roots() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut roots = Vec::new();
    if let Some(w) = env("VLM4VLA_CUDA_WHEELS") {
        roots.push(w.join("nvidia/cu13"));
    }
    roots.extend(env("CUDA_HOME"));
    roots.extend(env("CUDA_PATH"));
    roots.push(PathBuf::from("/usr/local/cuda"));
    if let Some(home) = env("HOME") {
        roots.push(home.join(".cache/vlm4vla/cuda-wheels/nvidia/cu13"));
    }
    let mut site = Vec::new();
    if let Some(venv) = env("VIRTUAL_ENV") {
        site.push(venv.join("lib"));
    }
    if let Some(home) = env("HOME") {
        site.push(home.join(".local/lib"));
    }
    site.push(PathBuf::from("/usr/local/lib"));
    site.push(PathBuf::from("/usr/lib"));
    for lib in site {
        let Ok(entries) = std::fs::read_dir(&lib) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
            .collect();
        pythons.sort();
        for py in pythons.into_iter().rev() {
            for packages in ["site-packages", "dist-packages"] {
                roots.push(py.join(packages).join("nvidia/cu13"));
            }
        }
    }
    roots
}

/// The folder holding the CUDA headers (`cuda_bf16.h` and the runtime headers it includes).
pub fn find_include() -> Result<PathBuf, Error> {
    let mut tried = Vec::new();
    let explicit = std::env::var_os("VLM4VLA_CUDA_INCLUDE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let candidates = explicit.into_iter().chain(roots().into_iter().map(|r| r.join("include")));
    for dir in candidates {
        if dir.join(KEY_HEADER).is_file() {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(Error::NotFound { what: format!("the CUDA headers ({KEY_HEADER})"), tried, hint: HINT })
}

/// The NVRTC library to load: a file found in a CUDA root, or a bare soname left to the loader's
/// search path (`LD_LIBRARY_PATH`, ldconfig) when no root has one.
pub fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("VLM4VLA_NVRTC").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    for root in roots() {
        for lib in ["lib", "lib64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"] {
            for name in NVRTC_NAMES {
                let file = root.join(lib).join(name);
                if file.is_file() {
                    out.push(file);
                }
            }
        }
    }
    out.extend(NVRTC_NAMES.iter().map(PathBuf::from));
    out
}

/// Load the first NVRTC candidate that loads; the error lists every attempt.
pub fn load_nvrtc() -> Result<crate::Nvrtc, Error> {
    let mut tried = Vec::new();
    for path in nvrtc_candidates() {
        match crate::Nvrtc::load(&path) {
            Ok(n) => return Ok(n),
            Err(e) => tried.push(format!("{} ({e})", display(&path))),
        }
    }
    Err(Error::NotFound { what: "the NVRTC library (libnvrtc.so)".into(), tried, hint: HINT })
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
