//! Exporting a backbone as a Hugging Face checkpoint directory (`models::export`): the tiny
//! transformers-made checkpoints, perturbed, export and load back bit for bit under exactly the
//! tensor names transformers wrote; built-in configs export a generated `config.json` that parses
//! back to the same config; bf16 exports hold bf16 tensors; small shard limits give an index that
//! maps every tensor; an existing non-empty directory is refused. (That transformers itself loads
//! the exports is checked once by `tools/export_check.py`; CI has no Python.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use vlm4vla::engine::{DType, SafeTensorsFile, Tensor};
use vlm4vla::models::common::checkpoint::{weight_files, WeightFiles};
use vlm4vla::models::export::{self, ExportSummary};
use vlm4vla::models::registry::{load_backbone, ModelConfig};
use vlm4vla::models::Backbone;

const FAMILIES: [&str; 3] = ["qwen2_5_vl", "paligemma", "kosmos2"];
const BUILTINS: [&str; 3] = ["qwen2.5-vl-tiny", "paligemma-tiny", "kosmos-2-tiny"];

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(family)
}

/// A fresh, absent path under a per-test directory.
fn out_dir(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("vlm4vla-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root.join("export")
}

/// Add small seeded noise to every other parameter (fused ones included), in place.
fn perturb(backbone: &dyn Backbone) {
    for (i, (_, t)) in backbone.params().iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let noise = Tensor::rand_normal(0.0, 0.05, t.shape(), t.dtype(), t.device(), 1000 + i as u64).unwrap();
        t.assign(&t.add(&noise).unwrap()).unwrap();
    }
}

/// Checkpoint name → (dtype, shape, raw f32 bits of the values).
fn snapshot(backbone: &dyn Backbone) -> BTreeMap<String, (DType, Vec<usize>, Vec<u32>)> {
    backbone
        .checkpoint_params()
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let b = bits(&t);
            (n, (t.dtype(), t.shape().to_vec(), b))
        })
        .collect()
}

/// Every tensor name in a checkpoint directory, with its dtype.
fn stored(dir: &Path) -> BTreeMap<String, DType> {
    let mut out = BTreeMap::new();
    for f in weight_files(dir).unwrap().files() {
        let st = SafeTensorsFile::open(f).unwrap();
        assert_eq!(st.metadata().and_then(|m| m.get("format")).map(String::as_str), Some("pt"), "{}", f.display());
        for n in st.names() {
            assert!(out.insert(n.to_string(), st.dtype(n).unwrap()).is_none(), "{n} stored twice");
        }
    }
    out
}

/// The raw bits of a tensor's values as f32 (exact for bf16 and f32).
fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

fn config_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn tiny_checkpoints_export_perturbed_weights_bit_identically_under_transformers_names() {
    for family in FAMILIES {
        let src = fixture(family);
        let model = load_backbone(src.to_str().unwrap(), DType::F32, 0).unwrap();
        let before = snapshot(model.as_ref());
        perturb(model.as_ref());
        let perturbed = snapshot(model.as_ref());
        assert_ne!(before, perturbed, "{family}: the perturbation changed nothing");

        let config = ModelConfig::from_dir(&src).unwrap();
        let out = out_dir(&format!("tiny-{family}"));
        let summary = export::write_hf_dir(model.as_ref(), &config, Some(&src), None, &out).unwrap();
        assert_eq!(summary.dtype, DType::F32, "{family}");
        assert_eq!(summary.weight_files, ["model.safetensors"], "{family}");
        assert!(summary.config_from_source);
        assert_eq!(
            summary.params,
            config.param_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>()
        );

        // Exactly the names transformers' save_pretrained wrote into the fixture (no tied head).
        let names: BTreeSet<String> = stored(&out).into_keys().collect();
        let fixture_names: BTreeSet<String> = stored(&src).into_keys().collect();
        assert_eq!(names, fixture_names, "{family}: exported names differ from transformers' own");
        assert_eq!(summary.tensors, names.len());

        let reloaded = load_backbone(out.to_str().unwrap(), DType::F32, 0).unwrap();
        assert_eq!(snapshot(reloaded.as_ref()), perturbed, "{family}: reloaded weights differ");

        // config.json: the source's, dtype set to what was written; the other files byte for byte.
        let (ours, theirs) = (config_json(&out), config_json(&src));
        assert_eq!(ours["dtype"], "float32", "{family}");
        assert_eq!(ours["text_config"], theirs["text_config"], "{family}: text_config changed");
        assert_eq!(ModelConfig::from_dir(&out).unwrap(), config);
        for name in export::COPIED_FILES {
            let from = src.join(name);
            assert_eq!(from.is_file(), summary.copied.contains(&name.to_string()), "{family}: {name}");
            if from.is_file() {
                assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(out.join(name)).unwrap(), "{family}: {name}");
            }
        }
        assert!(summary.copied.contains(&"tokenizer.json".to_string()), "{family}");
        std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
    }
}

#[test]
fn builtin_configs_export_a_generated_config_that_reloads_equal() {
    for name in BUILTINS {
        let config = ModelConfig::builtin(name).unwrap();
        let model = load_backbone(name, DType::F32, 7).unwrap();
        let out = out_dir(&format!("builtin-{name}"));
        let summary = export::write_hf_dir(model.as_ref(), &config, None, None, &out).unwrap();
        assert!(!summary.config_from_source);
        assert!(summary.copied.is_empty());
        assert_eq!(ModelConfig::from_dir(&out).unwrap(), config, "{name}: config.json does not parse back equal");
        assert_eq!(config_json(&out)["dtype"], "float32");
        let reloaded = load_backbone(out.to_str().unwrap(), DType::F32, 0).unwrap();
        assert_eq!(snapshot(reloaded.as_ref()), snapshot(model.as_ref()), "{name}");
        std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
    }
}

#[test]
fn bf16_export_writes_bf16_tensors_and_config_dtype() {
    for family in FAMILIES {
        let src = fixture(family);
        let model = load_backbone(src.to_str().unwrap(), DType::F32, 0).unwrap();
        perturb(model.as_ref());
        let config = ModelConfig::from_dir(&src).unwrap();
        let out = out_dir(&format!("bf16-{family}"));
        let summary = export::write_hf_dir(model.as_ref(), &config, Some(&src), Some(DType::BF16), &out).unwrap();
        assert_eq!(summary.dtype, DType::BF16);
        assert_eq!(summary.bytes, 2 * summary.params as u64);
        let dtypes = stored(&out);
        assert!(dtypes.values().all(|d| *d == DType::BF16), "{family}: {dtypes:?}");
        assert_eq!(config_json(&out)["dtype"], "bfloat16");

        // The same values as the model rounded to bf16.
        let expected: BTreeMap<_, _> = model
            .checkpoint_params()
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, bits(&t.to_dtype(DType::BF16).unwrap())))
            .collect();
        let reloaded = load_backbone(out.to_str().unwrap(), DType::BF16, 0).unwrap();
        let got: BTreeMap<_, _> = reloaded
            .checkpoint_params()
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                assert_eq!(t.dtype(), DType::BF16, "{n}");
                (n, bits(&t))
            })
            .collect();
        assert_eq!(got, expected, "{family}");
        std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
    }
}

#[test]
fn small_shard_limit_writes_an_index_that_maps_every_tensor() {
    for family in FAMILIES {
        let src = fixture(family);
        let model = load_backbone(src.to_str().unwrap(), DType::F32, 0).unwrap();
        perturb(model.as_ref());
        let config = ModelConfig::from_dir(&src).unwrap();
        let out = out_dir(&format!("shards-{family}"));
        let limit = 40_000;
        let summary: ExportSummary =
            export::write_hf_dir_sharded(model.as_ref(), &config, Some(&src), None, &out, limit).unwrap();
        let n = summary.weight_files.len();
        assert!(n > 2, "{family}: only {n} shards");
        for (i, f) in summary.weight_files.iter().enumerate() {
            assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        }
        assert!(!out.join("model.safetensors").exists());

        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"].as_u64(), Some(summary.bytes));
        let WeightFiles::Sharded { shards, weight_map, .. } = weight_files(&out).unwrap() else {
            panic!("{family}: not sharded")
        };
        assert_eq!(shards.len(), n);
        let names: BTreeSet<String> = stored(&out).into_keys().collect();
        assert_eq!(weight_map.keys().cloned().collect::<BTreeSet<_>>(), names, "{family}: index ≠ shards");
        let mut data = 0u64;
        for shard in &shards {
            let st = SafeTensorsFile::open(shard).unwrap();
            let bytes: u64 = st
                .names()
                .iter()
                .map(|t| {
                    assert_eq!(weight_map[*t], *shard, "{t}");
                    (st.shape(t).unwrap().iter().product::<usize>() * 4) as u64
                })
                .sum();
            assert!(bytes <= limit || st.len() == 1, "{}: {bytes} bytes in {} tensors", shard.display(), st.len());
            data += bytes;
        }
        assert_eq!(data, summary.bytes);

        let reloaded = load_backbone(out.to_str().unwrap(), DType::F32, 0).unwrap();
        assert_eq!(snapshot(reloaded.as_ref()), snapshot(model.as_ref()), "{family}");
        std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
    }
}

#[test]
fn an_existing_non_empty_directory_is_refused_and_an_empty_one_is_used() {
    let config = ModelConfig::builtin("kosmos-2-tiny").unwrap();
    let model = load_backbone("kosmos-2-tiny", DType::F32, 1).unwrap();
    let out = out_dir("refuse");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let err = export::write_hf_dir(model.as_ref(), &config, None, None, &out).unwrap_err().to_string();
    assert!(err.contains(&out.display().to_string()) && err.contains("non-empty"), "{err}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    let siblings: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(siblings, ["export"], "a temporary directory was left behind");

    // A file in the way is refused too; an empty directory is filled.
    let file = out.parent().unwrap().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = export::write_hf_dir(model.as_ref(), &config, None, None, &file).unwrap_err().to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    std::fs::remove_file(out.join("keep.txt")).unwrap();
    export::write_hf_dir(model.as_ref(), &config, None, None, &out).unwrap();
    assert_eq!(ModelConfig::from_dir(&out).unwrap(), config);
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

#[test]
fn a_source_config_of_another_model_or_a_foreign_backbone_is_refused() {
    let src = fixture("kosmos2");
    let model = load_backbone(src.to_str().unwrap(), DType::F32, 0).unwrap();
    let out = out_dir("mismatch");
    // The built-in tiny Kosmos-2 is a different size from the fixture's.
    let other = ModelConfig::builtin("kosmos-2-tiny").unwrap();
    let err = export::write_hf_dir(model.as_ref(), &other, Some(&src), None, &out).unwrap_err().to_string();
    assert!(err.contains("config.json") || err.contains("not a parameter") || err.contains("shape"), "{err}");
    let qwen = ModelConfig::builtin("qwen2.5-vl-tiny").unwrap();
    let err = export::write_hf_dir(model.as_ref(), &qwen, None, None, &out).unwrap_err().to_string();
    assert!(err.contains("kosmos2") && err.contains("qwen2_5_vl"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

/// Writes the directories `tools/export_check.py` loads with transformers (not run by CI):
/// `VLM4VLA_EXPORT_CHECK_DIR=/tmp/x cargo test --release --test export -- --ignored`. For each
/// family: `<family>-f32` and `<family>-bf16`, the unperturbed tiny checkpoint exported with its
/// source directory, `<family>-sharded` the same in f32 as shards of at most 40 kB, and
/// `<family>-builtin`, the built-in tiny config exported without one.
#[test]
#[ignore]
fn write_exports_for_the_transformers_check() {
    let root = PathBuf::from(std::env::var("VLM4VLA_EXPORT_CHECK_DIR").expect("set VLM4VLA_EXPORT_CHECK_DIR"));
    std::fs::create_dir_all(&root).unwrap();
    for (family, builtin) in FAMILIES.into_iter().zip(BUILTINS) {
        let src = fixture(family);
        let config = ModelConfig::from_dir(&src).unwrap();
        let model = load_backbone(src.to_str().unwrap(), DType::F32, 0).unwrap();
        for (tag, dtype) in [("f32", DType::F32), ("bf16", DType::BF16)] {
            let out = root.join(format!("{family}-{tag}"));
            let _ = std::fs::remove_dir_all(&out);
            export::write_hf_dir(model.as_ref(), &config, Some(&src), Some(dtype), &out).unwrap();
        }
        let out = root.join(format!("{family}-sharded"));
        let _ = std::fs::remove_dir_all(&out);
        export::write_hf_dir_sharded(model.as_ref(), &config, Some(&src), None, &out, 40_000).unwrap();
        let out = root.join(format!("{family}-builtin"));
        let _ = std::fs::remove_dir_all(&out);
        let model = load_backbone(builtin, DType::F32, 3).unwrap();
        export::write_hf_dir(model.as_ref(), &ModelConfig::builtin(builtin).unwrap(), None, None, &out).unwrap();
    }
}

#[test]
fn every_builtin_config_round_trips_through_its_generated_config_json() {
    for name in vlm4vla::models::registry::BUILTINS {
        let config = ModelConfig::builtin(name).unwrap();
        let dir = out_dir(&format!("config-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_hf_json().to_string()).unwrap();
        assert_eq!(ModelConfig::from_dir(&dir).unwrap(), config, "{name}");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
