//! Safetensors I/O and atomic writes: round trips in every dtype and layout, dtype conversion on
//! load, filter/rename, atomicity under failure, and error messages for broken files.

mod common;

use common::{arb_shape, arb_view, input};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vlm4vla::engine::io::{self, LoadOptions, SafeTensorsFile};
use vlm4vla::engine::{DType, Device, Error, Tensor};

const CPU: Device = Device::Cpu;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vlm4vla-io-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Names of the entries in the directory, sorted.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The exact bytes of a tensor's elements in row-major order.
fn bytes_of(t: &Tensor) -> Vec<u8> {
    t.to_cpu_storage().unwrap().as_bytes().to_vec()
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(bytes_of(got), bytes_of(want), "{name}: data");
}

/// The error message of `r`, which must be an Err.
fn err_msg<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} does not mention {p:?}");
    }
}

/// A hand-built safetensors file: 8-byte little-endian header length, the header text, the data.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ----- round trips ----------------------------------------------------------------------------

/// Tensors of one dtype: rank 0, empty, ordinary, extreme values, and three strided views.
fn zoo(dtype: DType, seed: u64) -> Vec<(String, Tensor)> {
    let (lo, hi) = match dtype {
        DType::U8 => (0.0, 256.0),
        DType::I64 => (-1e12, 1e12),
        _ => (-3.0, 3.0),
    };
    let rnd = |shape: &[usize], s: u64| Tensor::rand_uniform(lo, hi, shape, dtype, CPU, seed + s).unwrap();
    let special = match dtype {
        DType::U8 => Tensor::from_vec(vec![0u8, 1, 127, 128, 255], &[5], CPU),
        DType::I64 => Tensor::from_vec(vec![i64::MIN, -1, 0, 1, i64::MAX], &[5], CPU),
        DType::F16 | DType::BF16 => {
            let v = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 6e-8, 65504.0];
            Tensor::from_vec(v, &[6], CPU).and_then(|t| t.to_dtype(dtype))
        }
        DType::F32 => Tensor::from_vec(vec![f32::NAN, f32::INFINITY, f32::MIN, -0.0, 1e-45], &[5], CPU),
        DType::F64 => Tensor::from_vec(vec![f64::NAN, f64::NEG_INFINITY, f64::MAX, -0.0, 5e-324], &[5], CPU),
    }
    .unwrap();
    let transposed = rnd(&[5, 3], 1).transpose(0, 1).unwrap();
    let narrowed = rnd(&[7, 4], 2).narrow(0, 2, 3).unwrap().narrow(1, 1, 2).unwrap();
    let broadcast = rnd(&[1, 3], 3).broadcast_as(&[4, 3]).unwrap();
    for v in [&transposed, &narrowed, &broadcast] {
        assert!(!v.is_contiguous(), "the strided cases must be views");
    }
    let d = dtype.as_str();
    vec![
        (format!("{d}.scalar"), rnd(&[], 4)),
        (format!("{d}.empty"), rnd(&[0, 3], 5)),
        (format!("{d}.empty_last"), rnd(&[2, 0], 6)),
        (format!("{d}.matrix"), rnd(&[2, 3, 5], 7)),
        (format!("{d}.special"), special),
        (format!("{d}.transposed"), transposed),
        (format!("{d}.narrowed"), narrowed),
        (format!("{d}.broadcast"), broadcast),
    ]
}

#[test]
fn round_trip_every_dtype_with_metadata() {
    let dir = TempDir::new("roundtrip");
    let path = dir.join("all.safetensors");
    let all: Vec<(String, Tensor)> =
        DType::ALL.iter().enumerate().flat_map(|(i, &dt)| zoo(dt, 100 * i as u64)).collect();
    let refs: Vec<(&str, &Tensor)> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta: HashMap<String, String> = [("format", "pt"), ("step", "1200"), ("note", "ünïcode ✓ \"quoted\"")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    io::save(&path, &refs, Some(&meta)).unwrap();

    let f = SafeTensorsFile::open(&path).unwrap();
    assert_eq!(f.len(), all.len());
    assert_eq!(f.metadata(), Some(&meta));
    let mut want_names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    want_names.sort();
    assert_eq!(f.names(), want_names);
    for (name, t) in &all {
        assert_eq!(f.dtype(name).unwrap(), t.dtype(), "{name}");
        assert_eq!(f.shape(name).unwrap(), t.shape(), "{name}");
        assert_same(name, &f.get(name, None).unwrap(), t);
        assert_same(name, &f.get_as(name, t.shape(), Some(t.dtype())).unwrap(), t);
    }
    common::count("io", "round_trip", all.len());

    // Without metadata, and with no tensors at all.
    io::save(&path, &refs[..1], None).unwrap();
    assert_eq!(SafeTensorsFile::open(&path).unwrap().metadata(), None);
    io::save(&path, &[], None).unwrap();
    let f = SafeTensorsFile::open(&path).unwrap();
    assert!(f.is_empty());
    assert_eq!(dir.entries(), ["all.safetensors"]);
}

proptest! {
    #![proptest_config(common::config(64))]
    #[test]
    fn round_trip_property(
        shape in arb_shape(0..=4, 3000),
        view in arb_view(),
        dtype in prop::sample::select(DType::ALL.to_vec()),
        seed in 0u64..1000,
    ) {
        common::count("property", "io_round_trip", 1);
        let dir = TempDir::new("prop");
        let path = dir.join("t.safetensors");
        let t = input(&shape, view, 0.0, 100.0, dtype, seed, CPU);
        io::save(&path, &[("t", &t)], None).unwrap();
        let back = SafeTensorsFile::open(&path).unwrap().get("t", None).unwrap();
        prop_assert_eq!(back.shape(), t.shape());
        prop_assert_eq!(back.dtype(), dtype);
        prop_assert_eq!(bytes_of(&back), bytes_of(&t));
    }
}

#[test]
fn dtype_conversion_on_load() {
    let dir = TempDir::new("convert");
    let path = dir.join("c.safetensors");
    let b = Tensor::rand_normal(0.0, 2.0, &[3, 7], DType::BF16, CPU, 1).unwrap();
    let h = Tensor::rand_normal(0.0, 2.0, &[4], DType::F16, CPU, 2).unwrap();
    let x = Tensor::rand_normal(0.0, 2.0, &[5], DType::F32, CPU, 3).unwrap();
    io::save(&path, &[("b", &b), ("h", &h), ("x", &x)], None).unwrap();
    let f = SafeTensorsFile::open(&path).unwrap();

    // bf16 -> f32 is exact: the f32 values are the bf16 values.
    let b32 = f.get("b", Some(DType::F32)).unwrap();
    assert_eq!(b32.dtype(), DType::F32);
    assert_eq!(b32.shape(), &[3, 7]);
    let bits: Vec<u16> = bytes_of(&b).chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let want: Vec<f32> = bits.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
    assert_eq!(b32.to_vec::<f32>().unwrap(), want);
    assert!(want.iter().any(|v| v.fract() != 0.0), "the bf16 values must not be trivial");
    let h64 = f.get("h", Some(DType::F64)).unwrap();
    assert_eq!(h64.to_vec::<f64>().unwrap(), h.to_vec::<f64>().unwrap());
    // f32 -> bf16 rounds like the engine's own conversion.
    assert_same("x", &f.get("x", Some(DType::BF16)).unwrap(), &x.to_dtype(DType::BF16).unwrap());

    let all = io::load(&path, &LoadOptions::default().dtype(DType::F32)).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|(_, t)| t.dtype() == DType::F32));
    assert_eq!(all[0].1.to_vec::<f32>().unwrap(), b32.to_vec::<f32>().unwrap());
}

#[test]
fn load_with_filter_and_rename() {
    let dir = TempDir::new("filter");
    let path = dir.join("m.safetensors");
    let t = |v: f32| Tensor::from_vec(vec![v; 2], &[2], CPU).unwrap();
    let (a, b, c, d) = (t(1.0), t(2.0), t(3.0), t(4.0));
    io::save(
        &path,
        &[("model.layers.0.w", &a), ("model.layers.1.w", &b), ("model.norm", &c), ("lm_head.weight", &d)],
        None,
    )
    .unwrap();

    let got = io::load(&path, &LoadOptions::default().strip_prefix("model.")).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["layers.0.w", "layers.1.w", "norm"]);
    assert_eq!(got[2].1.to_vec::<f32>().unwrap(), [3.0, 3.0]);

    let got = io::load(&path, &LoadOptions::default().filter(|n| n.ends_with(".w"))).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["model.layers.0.w", "model.layers.1.w"]);

    let got = io::load(&path, &LoadOptions::default().rename(|n| n.replace("model.", "backbone."))).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["lm_head.weight", "backbone.layers.0.w", "backbone.layers.1.w", "backbone.norm"]);

    let none = io::load(&path, &LoadOptions::default().filter(|_| false)).unwrap();
    assert!(none.is_empty());

    // Two names renamed to one: an error naming both.
    let msg = err_msg(io::load(&path, &LoadOptions::default().rename(|n| n.replace(['0', '1'], "N"))));
    assert_mentions(&msg, &[&path.display().to_string(), "model.layers.0.w", "model.layers.1.w", "layers.N.w"]);
}

// ----- atomic writes --------------------------------------------------------------------------

#[test]
fn failed_save_leaves_previous_file_and_no_temp_files() {
    let dir = TempDir::new("atomic");
    let path = dir.join("ckpt.safetensors");
    let a = Tensor::from_vec(vec![1f32, 2., 3.], &[3], CPU).unwrap();
    io::save(&path, &[("a", &a)], None).unwrap();
    let before = std::fs::read(&path).unwrap();
    let p = path.display().to_string();

    // Tensors that cannot be saved: a duplicate name, the reserved header key.
    let msg = err_msg(io::save(&path, &[("x", &a), ("x", &a)], None));
    assert_mentions(&msg, &[&p, "`x`", "twice"]);
    let msg = err_msg(io::save(&path, &[("__metadata__", &a)], None));
    assert_mentions(&msg, &[&p, "`__metadata__`", "reserved"]);

    // A stream that fails half way through.
    let r = io::write_atomic_with(&path, |w| {
        w.write_all(b"partial content").unwrap();
        Err(Error::file("stream", "source went away"))
    });
    assert_mentions(&err_msg(r), &["source went away"]);

    // A stream that panics half way through.
    let r = std::panic::catch_unwind(|| {
        io::write_atomic_with(&path, |w| {
            w.write_all(b"partial content").unwrap();
            panic!("writer panicked")
        })
    });
    assert!(r.is_err());

    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir.entries(), ["ckpt.safetensors"]);
    assert_same("a", &SafeTensorsFile::open(&path).unwrap().get("a", None).unwrap(), &a);

    // The target is a directory: the rename fails, the directory stays, the temp file goes.
    let sub = dir.join("subdir");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inside"), b"keep").unwrap();
    let msg = err_msg(io::save(&sub, &[("a", &a)], None));
    assert_mentions(&msg, &[&sub.display().to_string()]);
    assert!(sub.is_dir());
    assert_eq!(std::fs::read(sub.join("inside")).unwrap(), b"keep");
    assert_eq!(dir.entries(), ["ckpt.safetensors", "subdir"]);

    // A missing parent directory.
    let nowhere = dir.join("missing").join("x.safetensors");
    assert_mentions(&err_msg(io::write_atomic(&nowhere, b"x")), &[&nowhere.display().to_string()]);
    assert_eq!(dir.entries(), ["ckpt.safetensors", "subdir"]);
}

#[test]
fn write_atomic_replaces_content_and_open_maps_stay_valid() {
    let dir = TempDir::new("replace");
    let path = dir.join("w.safetensors");
    let old = Tensor::from_vec(vec![1f64, 2., 3.], &[3], CPU).unwrap();
    let new = Tensor::from_vec(vec![7f64; 1000], &[10, 100], CPU).unwrap();
    io::save(&path, &[("w", &old)], None).unwrap();
    let mapped_old = SafeTensorsFile::open(&path).unwrap();
    io::save(&path, &[("w", &new)], None).unwrap();
    // The old map still sees the old file; a fresh open sees the new one.
    assert_same("old", &mapped_old.get("w", None).unwrap(), &old);
    assert_same("new", &SafeTensorsFile::open(&path).unwrap().get("w", None).unwrap(), &new);

    let cfg = dir.join("config.json");
    io::write_atomic(&cfg, b"{\"a\": 1}").unwrap();
    io::write_atomic(&cfg, b"{}").unwrap();
    assert_eq!(std::fs::read(&cfg).unwrap(), b"{}");
    io::write_atomic_with(&cfg, |w| {
        for i in 0..3 {
            write!(w, "{i}").map_err(|e| Error::io("test", e))?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(std::fs::read(&cfg).unwrap(), b"012");
    assert_eq!(dir.entries(), ["config.json", "w.safetensors"]);
}

// ----- broken files ---------------------------------------------------------------------------

/// A small valid file: its bytes and its header length.
fn valid_file(dir: &TempDir) -> (Vec<u8>, usize) {
    let path = dir.join("valid.safetensors");
    let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], &[2, 2], CPU).unwrap();
    let b = Tensor::from_vec(vec![5i64, 6, 7], &[3], CPU).unwrap();
    let c = Tensor::ones(&[3], DType::BF16, CPU).unwrap();
    io::save(&path, &[("a", &a), ("b", &b), ("c", &c)], None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (bytes, n)
}

fn open_err(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    let msg = err_msg(SafeTensorsFile::open(path));
    assert_mentions(&msg, &[&path.display().to_string()]);
    msg
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    let dir = TempDir::new("truncated");
    let (bytes, n) = valid_file(&dir);
    let path = dir.join("cut.safetensors");
    for cut in 0..bytes.len() {
        let msg = open_err(&path, &bytes[..cut]);
        if cut < 8 {
            assert_mentions(&msg, &["too short", "truncated"]);
        } else if cut < 8 + n {
            assert_mentions(&msg, &[&format!("header length {n} bytes is larger than the file"), "truncated"]);
        } else {
            assert_mentions(&msg, &["tensor `", "run past the end of the file", "truncated"]);
        }
    }
    common::count("io", "truncated", bytes.len());
    // One byte too many is also an error.
    let mut long = bytes.clone();
    long.push(0);
    assert_mentions(&open_err(&path, &long), &["1 byte after the last tensor's data"]);
}

#[test]
fn bad_headers_are_errors_naming_file_and_tensor() {
    let dir = TempDir::new("header");
    let path = dir.join("bad.safetensors");
    let check = |bytes: &[u8], parts: &[&str]| assert_mentions(&open_err(&path, bytes), parts);

    // Garbage.
    check(b"\x89PNG\r\n\x1a\n-not-a-checkpoint-at-all-", &["header length", "100 MB limit"]);
    check(&raw_file("abcd", b""), &["header is not valid JSON"]);
    check(&raw_file("[1, 2]", b""), &["not an object"]);
    check(&[4, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, b'{', b'}'], &["not valid UTF-8"]);
    // Header length larger than the file.
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    check(&b, &["header length 1000 bytes is larger than the file (10 bytes"]);
    // Invalid JSON.
    check(&raw_file(r#"{"a": {"dtype": "F32","#, b""), &["header is not valid JSON"]);
    // Valid JSON, not a safetensors header.
    check(&raw_file(r#"{"a": {"dtype": "F32", "shape": [2]}}"#, &[0; 8]), &["tensor `a`", "data_offsets"]);
    check(&raw_file(r#"{"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}"#, &[0]), &["tensor `a`", "Q4"]);
    check(&raw_file(r#"{"__metadata__": {"k": 1}}"#, b""), &["__metadata__"]);
    // Offsets out of range.
    check(
        &raw_file(r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, &[0; 4]),
        &["tensor `a`", "data_offsets [0, 8] run past the end of the file"],
    );
    check(
        &raw_file(
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}"#,
            &[0; 20],
        ),
        &["tensor `b`", "data_offsets [12, 20] do not start where the previous tensor ends"],
    );
    check(
        &raw_file(r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, &[0; 8]),
        &["tensor `a`", "needs 12 bytes but data_offsets [0, 8] span 8"],
    );
    check(
        &raw_file(r#"{"a": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}}"#, &[0; 8]),
        &["tensor `a`", "overflows"],
    );
    // Not a file at all.
    let missing = dir.join("missing.safetensors");
    assert_mentions(&err_msg(SafeTensorsFile::open(&missing)), &[&missing.display().to_string()]);
    assert_mentions(&err_msg(SafeTensorsFile::open(&dir.0)), &[&dir.0.display().to_string(), "not a regular file"]);
}

#[test]
fn missing_tensor_unsupported_dtype_and_wrong_shape() {
    let dir = TempDir::new("lookup");
    let path = dir.join("m.safetensors");
    let header = r#"{"model.w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                    "ids": {"dtype": "I32", "shape": [2], "data_offsets": [24, 32]},
                    "mask": {"dtype": "BOOL", "shape": [3], "data_offsets": [32, 35]},
                    "f8": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [35, 36]}}"#;
    let mut data = f32_le(&[1., 2., 3., 4., 5., 6.]);
    data.extend([1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 1, 0x38]);
    std::fs::write(&path, raw_file(header, &data)).unwrap();
    let p = path.display().to_string();
    let f = SafeTensorsFile::open(&path).unwrap();

    let msg = err_msg(f.get("w", None));
    assert_mentions(&msg, &[&p, "tensor `w`", "not in file (it has 4 tensors, e.g. `f8`, `ids`, `mask`, ...)"]);
    assert_mentions(&msg, &["did you mean `model.w`?"]);
    assert_mentions(&err_msg(f.shape("nope")), &[&p, "tensor `nope`", "not in file"]);
    assert_mentions(&err_msg(f.dtype("nope")), &[&p, "tensor `nope`", "not in file"]);

    for (name, dt) in [("ids", "I32"), ("f8", "F8_E4M3")] {
        let msg = err_msg(f.dtype(name));
        assert_mentions(&msg, &[&p, &format!("tensor `{name}`"), &format!("dtype {dt} is not supported")]);
        assert_mentions(&err_msg(f.get(name, Some(DType::F32))), &[&p, name, dt]);
    }
    // The other tensors of the file still load; BOOL reads as U8.
    let mask = f.get("mask", None).unwrap();
    assert_eq!(mask.dtype(), DType::U8);
    assert_eq!(mask.to_vec::<u8>().unwrap(), [1, 0, 1]);
    assert_mentions(&err_msg(io::load(&path, &LoadOptions::default())), &[&p, "F8_E4M3", "not supported"]);
    let ok = io::load(&path, &LoadOptions::default().filter(|n| n == "model.w" || n == "mask")).unwrap();
    assert_eq!(ok.len(), 2);

    let msg = err_msg(f.get_as("model.w", &[3, 2], None));
    assert_mentions(&msg, &[&p, "tensor `model.w`", "expected shape [3, 2], found [2, 3]"]);
    assert_mentions(&err_msg(f.get_as("model.w", &[], None)), &["expected shape [], found [2, 3]"]);
    let w = f.get_as("model.w", &[2, 3], Some(DType::F64)).unwrap();
    assert_eq!(w.to_vec::<f64>().unwrap(), [1., 2., 3., 4., 5., 6.]);

    let empty = dir.join("empty.safetensors");
    io::save(&empty, &[], None).unwrap();
    let msg = err_msg(SafeTensorsFile::open(&empty).unwrap().get("x", None));
    assert_mentions(&msg, &["tensor `x`", "not in file (it has 0 tensors)"]);
}

// ----- the format, pinned independently of the safetensors crate -----------------------------

/// A file built byte by byte: the header lists tensors out of data order, its length is odd so
/// every tensor's data is misaligned in the map, and the values have known bit patterns.
#[test]
fn reads_a_hand_built_file() {
    let dir = TempDir::new("handbuilt");
    let path = dir.join("hand.safetensors");
    let mut header = concat!(
        r#"{"__metadata__":{"format":"pt","source":"hand"},"#,
        r#""z.f64":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"#,
        r#""a.i64":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},"#,
        r#""m.f32":{"dtype":"F32","shape":[2,2],"data_offsets":[24,40]},"#,
        r#""b.bf16":{"dtype":"BF16","shape":[3],"data_offsets":[40,46]},"#,
        r#""h.f16":{"dtype":"F16","shape":[2],"data_offsets":[46,50]},"#,
        r#""e.f32":{"dtype":"F32","shape":[0,4],"data_offsets":[50,50]},"#,
        r#""u.u8":{"dtype":"U8","shape":[1,3],"data_offsets":[50,53]}}"#,
    )
    .to_string();
    if header.len() & 1 == 0 {
        header.push(' ');
    }
    assert_eq!(header.len() % 2, 1, "the header length must misalign the data");
    let mut data = Vec::new();
    data.extend((-2.5f64).to_le_bytes());
    data.extend(((-3i64) << 40).to_le_bytes());
    data.extend(i64::MAX.to_le_bytes());
    data.extend(f32_le(&[0.5, -1.0, 1e-3, 65504.0]));
    data.extend([0x80, 0x3f, 0x00, 0xc0, 0x49, 0x40]); // bf16 1.0, -2.0, 3.140625
    data.extend([0x00, 0x3c, 0x00, 0xbc]); // f16 1.0, -1.0
    data.extend([0, 7, 255]);
    std::fs::write(&path, raw_file(&header, &data)).unwrap();

    let f = SafeTensorsFile::open(&path).unwrap();
    assert_eq!(f.names(), ["a.i64", "b.bf16", "e.f32", "h.f16", "m.f32", "u.u8", "z.f64"]);
    let meta = f.metadata().unwrap();
    assert_eq!((meta["format"].as_str(), meta["source"].as_str(), meta.len()), ("pt", "hand", 2));

    let z = f.get("z.f64", None).unwrap();
    assert_eq!((z.shape(), z.to_vec::<f64>().unwrap()), (&[][..], vec![-2.5]));
    assert_eq!(f.get("a.i64", None).unwrap().to_vec::<i64>().unwrap(), [(-3i64) << 40, i64::MAX]);
    let m = f.get("m.f32", None).unwrap();
    assert_eq!((m.shape(), m.to_vec::<f32>().unwrap()), (&[2, 2][..], vec![0.5, -1.0, 1e-3, 65504.0]));
    let b = f.get("b.bf16", None).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(b.to_vec::<f32>().unwrap(), [1.0, -2.0, 3.140625]);
    assert_eq!(f.get("h.f16", Some(DType::F32)).unwrap().to_vec::<f32>().unwrap(), [1.0, -1.0]);
    let e = f.get("e.f32", None).unwrap();
    assert_eq!((e.shape(), e.elem_count()), (&[0, 4][..], 0));
    let u = f.get("u.u8", None).unwrap();
    assert_eq!((u.shape(), u.to_vec::<u8>().unwrap()), (&[1, 3][..], vec![0, 7, 255]));
}

/// What `save` writes: an 8-aligned header of exactly these entries, data ordered by descending
/// element size then name, each tensor aligned to its element size in the file.
#[test]
fn writes_the_documented_layout() {
    let dir = TempDir::new("layout");
    let path = dir.join("out.safetensors");
    let u = Tensor::from_vec(vec![9u8, 8, 7], &[3], CPU).unwrap();
    let h = Tensor::full(-2.0, &[1], DType::BF16, CPU).unwrap();
    let x = Tensor::from_vec(vec![1.5f32, -0.25], &[2, 1], CPU).unwrap();
    let i = Tensor::from_vec(vec![-1i64], &[], CPU).unwrap();
    let meta: HashMap<String, String> = [("k", "v"), ("a \"q\"", "\u{e9}\n")].map(|(k, v)| (k.into(), v.into())).into();
    let tensors = [("u", &u), ("h", &h), ("x", &x), ("i", &i)];
    io::save(&path, &tensors, Some(&meta)).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let want = concat!(
        "{\"__metadata__\":{\"a \\\"q\\\"\":\"\u{e9}\\n\",\"k\":\"v\"},",
        r#""i":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"#,
        r#""x":{"dtype":"F32","shape":[2,1],"data_offsets":[8,16]},"#,
        r#""h":{"dtype":"BF16","shape":[1],"data_offsets":[16,18]},"#,
        r#""u":{"dtype":"U8","shape":[3],"data_offsets":[18,21]}}"#,
    );
    assert_eq!(header.trim_end_matches(' '), want);
    assert!(header.len() - want.len() < 8, "padding is spaces up to a multiple of 8");
    let mut data = (-1i64).to_le_bytes().to_vec();
    data.extend(f32_le(&[1.5, -0.25]));
    data.extend([0x00, 0xc0]);
    data.extend([9, 8, 7]);
    assert_eq!(&bytes[8 + n..], &data[..]);

    // Deterministic: the same tensors (in any order) give the same bytes.
    let again = dir.join("again.safetensors");
    io::save(&again, &[("x", &x), ("i", &i), ("u", &u), ("h", &h)], Some(&meta)).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}

/// `tensor_from_le_bytes` copies from unaligned slices and checks the length.
#[test]
fn tensor_from_unaligned_le_bytes() {
    let mut buf = vec![0u8];
    buf.extend(f32_le(&[1.0, 2.0, 3.0]));
    let t = io::tensor_from_le_bytes(&buf[1..], &[3], DType::F32).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
    let msg = err_msg(io::tensor_from_le_bytes(&buf[1..], &[2], DType::F32));
    assert_mentions(&msg, &["12 bytes", "f32", "[2]"]);
    assert!(io::tensor_from_le_bytes(&[], &[usize::MAX, 2], DType::F64).is_err());
}
