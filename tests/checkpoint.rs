//! Checkpoint resolution (local directory, Hugging Face cache layout), config `model_type`
//! detection, and `load_params` on single-file and sharded safetensors, including every
//! bad-input path: each error names the file and the tensor or field. Checkpoints are written
//! with `vlm4vla_engine::io::save` into a fresh temporary directory per test.

use std::path::{Path, PathBuf};
use vlm4vla::engine::{io, DType, Device, Tensor};
use vlm4vla::models::common::checkpoint::{
    self, load_params, param_count, param_count_by_group, read_config, resolve_in, weight_files, ModelType, WeightFiles,
};

fn tmp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("vlm4vla-ckpt-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn t(shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|i| seed + i as f32 * 0.25).collect::<Vec<f32>>(), shape, Device::Cpu).unwrap()
}

fn exp(list: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
    list.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
}

/// A tiny "checkpoint": embed [6, 4], a layer weight [4, 4] and bias [4], an int buffer.
fn write_single(dir: &Path) -> (Tensor, Tensor, Tensor) {
    let (embed, w, b) = (t(&[6, 4], 1.0), t(&[4, 4], -2.0), t(&[4], 0.5));
    let pos = Tensor::from_vec(vec![0i64, 1, 2], &[3], Device::Cpu).unwrap();
    io::save(
        dir.join("model.safetensors"),
        &[
            ("model.embed_tokens.weight", &embed),
            ("model.layers.0.proj.weight", &w),
            ("model.layers.0.proj.bias", &b),
            ("model.position_ids", &pos),
        ],
        None,
    )
    .unwrap();
    (embed, w, b)
}

/// Strip `model.`, skip `position_ids`.
fn rename(n: &str) -> Option<String> {
    if n.ends_with("position_ids") {
        return None;
    }
    Some(n.strip_prefix("model.").unwrap_or(n).to_string())
}

fn expected() -> Vec<(String, Vec<usize>)> {
    exp(&[
        ("embed_tokens.weight", &[6, 4]),
        ("layers.0.proj.weight", &[4, 4]),
        ("layers.0.proj.bias", &[4]),
        ("lm_head.weight", &[6, 4]),
    ])
}

const TIED: &[(&str, &str)] = &[("lm_head.weight", "embed_tokens.weight")];

#[test]
fn loads_renames_converts_and_ties() {
    let dir = tmp_dir("single");
    let (embed, w, b) = write_single(&dir);
    assert_eq!(weight_files(&dir).unwrap(), WeightFiles::Single(dir.join("model.safetensors")));
    let ps = load_params(&dir, &expected(), rename, DType::F32, TIED).unwrap();
    assert_eq!(ps.names(), ["embed_tokens.weight", "layers.0.proj.weight", "layers.0.proj.bias", "lm_head.weight"]);
    let get = |n: &str| ps.get(n).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(get("embed_tokens.weight"), embed.to_vec::<f32>().unwrap());
    assert_eq!(get("lm_head.weight"), embed.to_vec::<f32>().unwrap());
    assert_eq!(get("layers.0.proj.weight"), w.to_vec::<f32>().unwrap());
    assert_eq!(get("layers.0.proj.bias"), b.to_vec::<f32>().unwrap());

    // dtype conversion on load.
    let ps = load_params(&dir, &expected(), rename, DType::BF16, TIED).unwrap();
    assert!(ps.iter().all(|(_, t)| t.dtype() == DType::BF16));
    let back = ps.get("layers.0.proj.weight").unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(back, w.to_vec::<f32>().unwrap()); // quarter steps are exact in bf16

    // A stored lm_head wins over the tie.
    let lm = t(&[6, 4], 100.0);
    let pos = Tensor::from_vec(vec![0i64], &[1], Device::Cpu).unwrap();
    io::save(
        dir.join("model.safetensors"),
        &[
            ("model.embed_tokens.weight", &embed),
            ("model.layers.0.proj.weight", &w),
            ("model.layers.0.proj.bias", &b),
            ("model.position_ids", &pos),
            ("lm_head.weight", &lm),
        ],
        None,
    )
    .unwrap();
    let ps = load_params(&dir, &expected(), rename, DType::F32, TIED).unwrap();
    assert_eq!(ps.get("lm_head.weight").unwrap().to_vec::<f32>().unwrap(), lm.to_vec::<f32>().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write_sharded(dir: &Path) {
    let (embed, w, b) = (t(&[6, 4], 1.0), t(&[4, 4], -2.0), t(&[4], 0.5));
    io::save(dir.join("model-00001-of-00002.safetensors"), &[("model.embed_tokens.weight", &embed)], None).unwrap();
    io::save(
        dir.join("model-00002-of-00002.safetensors"),
        &[("model.layers.0.proj.weight", &w), ("model.layers.0.proj.bias", &b)],
        None,
    )
    .unwrap();
    let index = serde_json::json!({
        "metadata": {"total_size": 176},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.proj.weight": "model-00002-of-00002.safetensors",
            "model.layers.0.proj.bias": "model-00002-of-00002.safetensors",
        }
    });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn loads_sharded_checkpoints() {
    let dir = tmp_dir("sharded");
    write_sharded(&dir);
    match weight_files(&dir).unwrap() {
        WeightFiles::Sharded { shards, weight_map, .. } => {
            assert_eq!(shards.len(), 2);
            assert_eq!(weight_map.len(), 3);
        }
        other => panic!("expected shards, got {other:?}"),
    }
    let ps = load_params(&dir, &expected(), rename, DType::F32, TIED).unwrap();
    assert_eq!(ps.len(), 4);
    let listed = checkpoint::list_tensors(&dir).unwrap();
    assert_eq!(
        listed,
        [
            ("model.embed_tokens.weight".to_string(), vec![6, 4], DType::F32),
            ("model.layers.0.proj.bias".to_string(), vec![4], DType::F32),
            ("model.layers.0.proj.weight".to_string(), vec![4, 4], DType::F32),
        ]
    );
    assert_eq!(ps.get("layers.0.proj.bias").unwrap().to_vec::<f32>().unwrap(), [0.5, 0.75, 1.0, 1.25]);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn err_of(dir: &Path, expected: &[(String, Vec<usize>)]) -> String {
    match load_params(dir, expected, rename, DType::F32, TIED) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sharded_index_pointing_to_missing_shard() {
    let dir = tmp_dir("missing-shard");
    write_sharded(&dir);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = err_of(&dir, &expected());
    assert!(
        err.contains("model.safetensors.index.json")
            && err.contains("model-00002-of-00002.safetensors")
            && err.contains("does not exist"),
        "{err}"
    );

    // An index entry whose shard lacks the tensor.
    let dir2 = tmp_dir("index-lies");
    write_sharded(&dir2);
    let text = std::fs::read_to_string(dir2.join("model.safetensors.index.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["weight_map"]["model.layers.0.proj.bias"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(dir2.join("model.safetensors.index.json"), v.to_string()).unwrap();
    let err = err_of(&dir2, &expected());
    assert!(err.contains("model.layers.0.proj.bias") && err.contains("not present in shard"), "{err}");

    // A malformed index.
    std::fs::write(dir2.join("model.safetensors.index.json"), r#"{"metadata": {}}"#).unwrap();
    let err = err_of(&dir2, &expected());
    assert!(err.contains("model.safetensors.index.json") && err.contains("weight_map"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = tmp_dir("truncated");
    write_single(&dir);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = err_of(&dir, &expected());
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
    std::fs::write(&path, &bytes[..5]).unwrap();
    let err = err_of(&dir, &expected());
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let dir = tmp_dir("missing");
    write_single(&dir);
    let mut e = expected();
    e.push(("layers.1.proj.weight".into(), vec![4, 4]));
    e.push(("norm.weight".into(), vec![4]));
    let err = err_of(&dir, &e);
    assert!(
        err.contains("model.safetensors")
            && err.contains("layers.1.proj.weight [4, 4]")
            && err.contains("norm.weight [4]")
            && err.contains("2 missing"),
        "{err}"
    );
    // Without the tie, the absent lm_head is missing too.
    let err = load_params(&dir, &expected(), rename, DType::F32, &[]).unwrap_err().to_string();
    assert!(err.contains("lm_head.weight") && err.contains("missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_shape_names_tensor_both_shapes_and_file() {
    let dir = tmp_dir("shape");
    write_single(&dir);
    let mut e = expected();
    e[1].1 = vec![4, 5];
    let err = err_of(&dir, &e);
    assert!(
        err.contains("model.safetensors")
            && err.contains("model.layers.0.proj.weight")
            && err.contains("[4, 5]")
            && err.contains("[4, 4]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unexpected_tensors_are_listed() {
    let dir = tmp_dir("unexpected");
    write_single(&dir);
    let e: Vec<_> = expected().into_iter().filter(|(n, _)| n != "layers.0.proj.bias").collect();
    let err = err_of(&dir, &e);
    assert!(err.contains("unexpected tensor") && err.contains("model.layers.0.proj.bias"), "{err}");
    // Skipping it through `rename` is how a caller ignores a tensor.
    let skip = |n: &str| if n.ends_with("bias") { None } else { rename(n) };
    let ps = load_params(&dir, &e, skip, DType::F32, TIED).unwrap();
    assert_eq!(ps.len(), 3);
    // Two names mapped onto one.
    let clash = |n: &str| if n.ends_with("position_ids") { None } else { Some("embed_tokens.weight".to_string()) };
    let err =
        load_params(&dir, &exp(&[("embed_tokens.weight", &[6, 4])]), clash, DType::F32, &[]).unwrap_err().to_string();
    assert!(err.contains("embed_tokens.weight"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_weights_names_the_directory() {
    let dir = tmp_dir("empty");
    let err = err_of(&dir, &expected());
    assert!(err.contains(&dir.display().to_string()) && err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_model_types() {
    let dir = tmp_dir("config");
    for (value, want) in
        [("qwen2_5_vl", ModelType::Qwen2_5Vl), ("paligemma", ModelType::PaliGemma), ("kosmos-2", ModelType::Kosmos2)]
    {
        std::fs::write(dir.join("config.json"), format!(r#"{{"model_type": "{value}", "hidden_size": 8}}"#)).unwrap();
        let cfg = read_config(&dir).unwrap();
        assert_eq!(cfg["hidden_size"], 8);
        assert_eq!(ModelType::from_config(&cfg, &dir.join("config.json")).unwrap(), want);
        assert_eq!(want.as_str(), value);
    }
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let ckpt = resolve_in(dir.to_str().unwrap(), &[]).unwrap();
    let err = ckpt.model_type().unwrap_err().to_string();
    assert!(
        err.contains("config.json")
            && err.contains("model_type")
            && err.contains("llama")
            && err.contains("qwen2_5_vl, paligemma, kosmos-2"),
        "{err}"
    );
    std::fs::write(dir.join("config.json"), r#"{"hidden_size": 8}"#).unwrap();
    let err = ckpt.model_type().unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("`model_type` is missing"), "{err}");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "#).unwrap();
    let err = ckpt.read_config().unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(ckpt.read_config().unwrap_err().to_string().contains("config.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fake hub cache: `models--org--tiny/{refs/main, snapshots/<rev>/config.json}`.
fn fake_cache(root: &Path, revs: &[&str], main: Option<&str>) {
    let repo = root.join("models--org--tiny");
    for rev in revs {
        let snap = repo.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), format!(r#"{{"model_type": "paligemma", "rev": "{rev}"}}"#)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Some(m) = main {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), m).unwrap();
    }
}

#[test]
fn resolves_hub_ids_from_the_cache() {
    let cache = tmp_dir("hub");
    fake_cache(&cache, &["aaa111", "bbb222"], Some("aaa111\n"));
    let caches = vec![cache.clone()];
    let r = resolve_in("org/tiny", &caches).unwrap();
    assert_eq!(r.dir, cache.join("models--org--tiny/snapshots/aaa111"));
    assert_eq!(r.read_config().unwrap()["rev"], "aaa111");
    assert_eq!(r.model_type().unwrap(), ModelType::PaliGemma);
    // An explicit revision.
    let r = resolve_in("org/tiny@bbb222", &caches).unwrap();
    assert!(r.dir.ends_with("bbb222"));
    let r = resolve_in("org/tiny@main", &caches).unwrap();
    assert!(r.dir.ends_with("aaa111"));
    // No refs/main: the newest snapshot.
    std::fs::remove_file(cache.join("models--org--tiny/refs/main")).unwrap();
    let r = resolve_in("org/tiny", &caches).unwrap();
    assert!(r.dir.ends_with("bbb222"), "{r:?}");
    // A local directory wins.
    let local = cache.join("models--org--tiny/snapshots/aaa111");
    assert_eq!(resolve_in(local.to_str().unwrap(), &[]).unwrap().origin, "local directory");

    // Not found: the error lists where it looked.
    let err = resolve_in("org/absent", &[cache.clone(), cache.join("second")]).unwrap_err().to_string();
    assert!(
        err.contains("org/absent")
            && err.contains(&cache.join("models--org--absent").display().to_string())
            && err.contains(&cache.join("second/models--org--absent").display().to_string()),
        "{err}"
    );
    let err = resolve_in("org/tiny@ccc333", &caches).unwrap_err().to_string();
    assert!(err.contains("ccc333"), "{err}");
    let err = resolve_in("not-a-dir-or-id", &caches).unwrap_err().to_string();
    assert!(err.contains("not-a-dir-or-id") && err.contains("org/name"), "{err}");

    // The environment: HF_HUB_CACHE (only this test reads it).
    std::env::set_var("HF_HUB_CACHE", &cache);
    assert_eq!(checkpoint::hub_cache_dirs(), caches);
    assert!(checkpoint::resolve("org/tiny").unwrap().dir.starts_with(&cache));
    std::env::remove_var("HF_HUB_CACHE");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn param_counts() {
    let e = expected();
    assert_eq!(param_count(&e), 24 + 16 + 4 + 24);
    let by = param_count_by_group(&e, |n| n.split('.').next().unwrap_or("").to_string());
    assert_eq!(by["layers"], 20);
    assert_eq!(by["lm_head"], 24);
    assert_eq!(by.len(), 3);
}

#[test]
fn config_helpers_name_file_and_field() {
    use vlm4vla::models::common::config::{mrope_section, parse, rope_theta, section};
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Text {
        hidden_size: usize,
    }
    let path = Path::new("/ckpt/config.json");
    let hub = serde_json::json!({"text_config": {"hidden_size": 8, "rope_theta": 1e6,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}});
    let text = section(&hub, "text_config", path).unwrap();
    assert_eq!(parse::<Text>(text, path, "text_config").unwrap().hidden_size, 8);
    assert_eq!(rope_theta(text, path, "text_config").unwrap(), Some(1e6));
    assert_eq!(mrope_section(text, path, "text_config").unwrap(), Some(vec![16, 24, 24]));
    let v5 = serde_json::json!({"rope_parameters": {"rope_theta": 5e5, "mrope_section": [2, 3, 3]}});
    assert_eq!(rope_theta(&v5, path, "").unwrap(), Some(5e5));
    assert_eq!(mrope_section(&v5, path, "").unwrap(), Some(vec![2, 3, 3]));
    assert_eq!(rope_theta(&serde_json::json!({}), path, "").unwrap(), None);

    let err = section(&hub, "vision_config", path).unwrap_err().to_string();
    assert!(err.contains("/ckpt/config.json") && err.contains("`vision_config` is missing"), "{err}");
    let bad =
        serde_json::json!({"hidden_size": "eight", "rope_theta": "big", "rope_scaling": {"mrope_section": [1, "x"]}});
    let err = parse::<Text>(&bad, path, "text_config").unwrap_err().to_string();
    assert!(err.contains("/ckpt/config.json") && err.contains("text_config") && err.contains("invalid type"), "{err}");
    let err = rope_theta(&bad, path, "text_config").unwrap_err().to_string();
    assert!(err.contains("text_config.rope_theta"), "{err}");
    let err = mrope_section(&bad, path, "text_config").unwrap_err().to_string();
    assert!(err.contains("text_config.rope_scaling.mrope_section"), "{err}");
    let err = parse::<Text>(&serde_json::json!({}), path, "").unwrap_err().to_string();
    assert!(err.contains("top level") && err.contains("missing field `hidden_size`"), "{err}");
}
