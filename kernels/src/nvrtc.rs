//! NVRTC, loaded at run time with `dlopen`: no link-time dependency on CUDA, so the crate builds
//! everywhere and only a caller that compiles kernels needs `libnvrtc`.

use crate::Error;
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

type Program = *mut c_void;
type Status = c_int;

/// The NVRTC entry points vlm4vla uses, resolved once from the loaded library.
pub struct Nvrtc {
    path: PathBuf,
    version: (i32, i32),
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create_program: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile_program: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    destroy_program: unsafe extern "C" fn(*mut Program) -> Status,
    get_ptx_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    get_ptx: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    get_cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    get_cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    get_log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    get_log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    // Kept last so the function pointers above never outlive the mapping.
    _lib: Library,
    _builtins: Option<Library>,
}

/// What one NVRTC compilation produced.
pub(crate) struct Output {
    pub ptx: String,
    pub cubin: Option<Vec<u8>>,
    pub log: String,
}

/// An NVRTC program handle, destroyed on drop.
struct ProgramGuard<'a> {
    nvrtc: &'a Nvrtc,
    prog: Program,
}

impl Drop for ProgramGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: `prog` came from nvrtcCreateProgram and is destroyed exactly once, here.
        unsafe { (self.nvrtc.destroy_program)(&mut self.prog) };
    }
}

impl Nvrtc {
    /// Load `libnvrtc` from `path` (a file path or a bare soname for the loader's search). A
    /// `libnvrtc-builtins.so.*` next to it is loaded first with global visibility, so NVRTC finds
    /// it even when its folder is not on the loader's path (the pip wheels carry no RUNPATH).
    pub fn load(path: &Path) -> Result<Nvrtc, Error> {
        let builtins = path.parent().and_then(builtins_next_to).and_then(|b| load_global(&b));
        // SAFETY: libnvrtc's initialisers have no preconditions; symbols are checked below.
        let lib = unsafe { Library::new(path) }
            .map_err(|e| Error::Load { path: path.display().to_string(), reason: e.to_string() })?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the declared signature is NVRTC's documented C signature for this name.
                *unsafe { lib.get($name) }.map_err(|e| Error::Load {
                    path: path.display().to_string(),
                    reason: format!("symbol {}: {e}", String::from_utf8_lossy(&$name[..$name.len() - 1])),
                })?
            };
        }
        let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status = sym!(b"nvrtcVersion\0");
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid for writes.
        unsafe { version_fn(&mut major, &mut minor) };
        Ok(Nvrtc {
            path: path.to_path_buf(),
            version: (major, minor),
            get_error_string: sym!(b"nvrtcGetErrorString\0"),
            create_program: sym!(b"nvrtcCreateProgram\0"),
            compile_program: sym!(b"nvrtcCompileProgram\0"),
            destroy_program: sym!(b"nvrtcDestroyProgram\0"),
            get_ptx_size: sym!(b"nvrtcGetPTXSize\0"),
            get_ptx: sym!(b"nvrtcGetPTX\0"),
            get_cubin_size: sym!(b"nvrtcGetCUBINSize\0"),
            get_cubin: sym!(b"nvrtcGetCUBIN\0"),
            get_log_size: sym!(b"nvrtcGetProgramLogSize\0"),
            get_log: sym!(b"nvrtcGetProgramLog\0"),
            _lib: lib,
            _builtins: builtins,
        })
    }

    /// The library file (or soname) this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// NVRTC's `(major, minor)` version.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    fn check(&self, call: &'static str, status: Status) -> Result<(), Error> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any status.
        let message = unsafe { CStr::from_ptr((self.get_error_string)(status)) }.to_string_lossy().into_owned();
        Err(Error::Nvrtc { call, status, message })
    }

    /// Compile `source` (named `name` in diagnostics) with `headers` given as `(include name,
    /// contents)` pairs and the NVRTC `options`. A compile error is `Error::Compile` with the log.
    pub(crate) fn compile(
        &self,
        name: &str,
        source: &str,
        headers: &[(&str, &str)],
        options: &[String],
    ) -> Result<Output, Error> {
        let cstr = |s: &str| CString::new(s).map_err(|_| Error::Invalid(format!("NUL byte in {name}: {s:.40}")));
        let c_source = cstr(source)?;
        let c_name = cstr(name)?;
        let c_headers = headers.iter().map(|(_, body)| cstr(body)).collect::<Result<Vec<_>, _>>()?;
        let c_includes = headers.iter().map(|(inc, _)| cstr(inc)).collect::<Result<Vec<_>, _>>()?;
        let c_options = options.iter().map(|o| cstr(o)).collect::<Result<Vec<_>, _>>()?;
        let header_ptrs: Vec<*const c_char> = c_headers.iter().map(|c| c.as_ptr()).collect();
        let include_ptrs: Vec<*const c_char> = c_includes.iter().map(|c| c.as_ptr()).collect();
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|c| c.as_ptr()).collect();

        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live NUL-terminated string; the arrays have the counts given.
        let status = unsafe {
            (self.create_program)(
                &mut prog,
                c_source.as_ptr(),
                c_name.as_ptr(),
                header_ptrs.len() as c_int,
                header_ptrs.as_ptr(),
                include_ptrs.as_ptr(),
            )
        };
        self.check("nvrtcCreateProgram", status)?;
        let guard = ProgramGuard { nvrtc: self, prog };
        // SAFETY: `prog` is live; the option array has `option_ptrs.len()` valid strings.
        let status = unsafe { (self.compile_program)(guard.prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log = self.read_string(&guard, self.get_log_size, self.get_log, "nvrtcGetProgramLog")?;
        if status != 0 {
            return Err(Error::Compile { name: name.to_string(), options: options.join(" "), log });
        }
        let ptx = self.read_string(&guard, self.get_ptx_size, self.get_ptx, "nvrtcGetPTX")?;
        let cubin = self.read_bytes(&guard, self.get_cubin_size, self.get_cubin, "nvrtcGetCUBIN").ok();
        let cubin = cubin.filter(|c| !c.is_empty());
        Ok(Output { ptx, cubin, log })
    }

    fn read_bytes(
        &self,
        guard: &ProgramGuard,
        size_fn: unsafe extern "C" fn(Program, *mut usize) -> Status,
        read_fn: unsafe extern "C" fn(Program, *mut c_char) -> Status,
        call: &'static str,
    ) -> Result<Vec<u8>, Error> {
        let mut size = 0usize;
        // SAFETY: `guard.prog` is live and `size` is valid for writes.
        self.check(call, unsafe { size_fn(guard.prog, &mut size) })?;
        let mut buf = vec![0u8; size];
        if size > 0 {
            // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported.
            self.check(call, unsafe { read_fn(guard.prog, buf.as_mut_ptr().cast()) })?;
        }
        Ok(buf)
    }

    fn read_string(
        &self,
        guard: &ProgramGuard,
        size_fn: unsafe extern "C" fn(Program, *mut usize) -> Status,
        read_fn: unsafe extern "C" fn(Program, *mut c_char) -> Status,
        call: &'static str,
    ) -> Result<String, Error> {
        let mut bytes = self.read_bytes(guard, size_fn, read_fn, call)?;
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Load `path` with global symbol visibility (`RTLD_NOW | RTLD_GLOBAL`).
#[cfg(unix)]
fn load_global(path: &Path) -> Option<Library> {
    use libloading::os::unix::{Library as UnixLibrary, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading NVIDIA's builtins library runs no initialisers with preconditions.
    unsafe { UnixLibrary::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.ok().map(Library::from)
}

/// Elsewhere the loader finds the builtins next to NVRTC by itself.
#[cfg(not(unix))]
fn load_global(_path: &Path) -> Option<Library> {
    None
}

/// The `libnvrtc-builtins.so.*` in `dir`, if there is one (not the `.alt` variant).
fn builtins_next_to(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so") && !n.contains(".alt."))
        })
        .collect();
    found.sort();
    found.pop()
}
