//! Fused projections (q|k|v, gate|up held as one parameter each): a Hugging Face checkpoint loads
//! into the fused store and is written back with exactly its own names and bytes; parameter
//! counts and groups are those of the checkpoint; the trainer's checkpoints hold checkpoint
//! names and resume bit for bit. That the fused model computes what the checkpoint's separate
//! projections compute is what the parity tests check (outputs and every gradient, by checkpoint
//! name, against transformers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vlm4vla::engine::{io, DType, Device, LoadOptions, ParamStore, Result, SafeTensorsFile, Tensor};
use vlm4vla::models::common::checkpoint::param_count_by_group;
use vlm4vla::models::common::fused::{FusedLayout, Fusion};
use vlm4vla::models::kosmos2::{self, Kosmos2, Kosmos2Config};
use vlm4vla::models::paligemma::{self, PaliGemma, PaliGemmaConfig};
use vlm4vla::models::qwen2_5_vl::{self, Qwen25Vl, Qwen25VlConfig};
use vlm4vla::models::vla::{HeadConfig, PolicyConfig, VlaPolicy};
use vlm4vla::models::{Backbone, BackboneInput};
use vlm4vla::train::{Batch, BatchSource, TrainConfig, Trainer};

mod common;

fn fixtures(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family)
}

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm4vla-fused-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A checkpoint directory for `family`: its fixture config and weights as `model.safetensors`.
fn hub_dir(family: &str, weights: &str) -> PathBuf {
    let dir = tmp_dir(family);
    std::fs::copy(fixtures(family).join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(fixtures(family).join(weights), dir.join("model.safetensors")).unwrap();
    dir
}

fn load(family: &str, dir: &Path) -> Box<dyn Backbone> {
    match family {
        "qwen2_5_vl" => Box::new(Qwen25Vl::load(dir, None).unwrap()),
        "paligemma" => Box::new(PaliGemma::load(dir, None).unwrap()),
        _ => Box::new(Kosmos2::load(dir, None).unwrap()),
    }
}

/// Every tensor of a safetensors file: name → (dtype, shape, little-endian bytes).
fn file_tensors(path: &Path) -> BTreeMap<String, (DType, Vec<usize>, Vec<u8>)> {
    io::load(path, &LoadOptions::default())
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let bytes = t.to_cpu_storage().unwrap().as_bytes().to_vec();
            (n, (t.dtype(), t.shape().to_vec(), bytes))
        })
        .collect()
}

#[test]
fn hub_checkpoints_round_trip_through_the_fused_store() {
    for (family, weights) in
        [("qwen2_5_vl", "weights.safetensors"), ("paligemma", "model.safetensors"), ("kosmos2", "weights.safetensors")]
    {
        let dir = hub_dir(family, weights);
        let model = load(family, &dir);
        let fused = model.fused();
        assert!(!fused.is_empty(), "{family}: nothing fused");
        assert!(model.params().names().iter().all(|n| fused.slot(n).is_none()), "{family}: a part left unfused");
        assert!(model.params().names().iter().any(|n| fused.is_fused(n)), "{family}: no fused parameter");

        let named = model.checkpoint_params().unwrap();
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let out = dir.join("saved.safetensors");
        io::save(&out, &refs, None).unwrap();
        let (mut original, saved) = (file_tensors(&dir.join("model.safetensors")), file_tensors(&out));
        if family == "paligemma" {
            // This fixture is spelled as transformers 5.x `save_pretrained` writes it
            // (`vision_tower.*`); the model keeps, and writes, the hub spelling.
            original = original.into_iter().map(|(n, t)| (paligemma::canonical_name(&n), t)).collect();
        }
        assert_eq!(original.keys().collect::<Vec<_>>(), saved.keys().collect::<Vec<_>>(), "{family}: names");
        for (name, t) in &original {
            assert!(saved[name] == *t, "{family}: {name} differs after the round trip");
        }
        // Our own writer gives the same file for the same tensors: byte for byte.
        if family != "paligemma" {
            let a = std::fs::read(dir.join("model.safetensors")).unwrap();
            assert_eq!(a, std::fs::read(&out).unwrap(), "{family}: file bytes");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn fused_stores_keep_the_checkpoint_counts_and_groups() {
    type Shapes = Vec<(String, Vec<usize>)>;
    let sorted = |mut v: Shapes| {
        v.sort();
        v
    };
    let cases: Vec<(Box<dyn Backbone>, Shapes, usize)> = vec![
        {
            let cfg = qwen_config();
            let shapes = qwen2_5_vl::param_shapes(&cfg);
            (Box::new(Qwen25Vl::random(cfg.clone(), 1, DType::F32).unwrap()), shapes, qwen2_5_vl::num_params(&cfg))
        },
        {
            let cfg = PaliGemmaConfig::tiny();
            let shapes = paligemma::param_shapes(&cfg);
            (Box::new(PaliGemma::random(cfg.clone(), 1, DType::F32).unwrap()), shapes, paligemma::num_params(&cfg))
        },
        {
            let cfg = Kosmos2Config::tiny();
            let shapes = kosmos2::param_shapes(&cfg);
            (Box::new(Kosmos2::random(cfg.clone(), 1, DType::F32).unwrap()), shapes, kosmos2::num_params(&cfg))
        },
    ];
    for (model, shapes, count) in cases {
        let family = model.family();
        assert_eq!(model.params().num_params(), count, "{family}: parameter count");
        assert!(model.params().len() < shapes.len(), "{family}: fewer, larger parameters");
        let split: Vec<(String, Vec<usize>)> =
            model.checkpoint_params().unwrap().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        assert_eq!(sorted(split), sorted(shapes.clone()), "{family}: checkpoint names and shapes");
        let held: Vec<(String, Vec<usize>)> =
            model.params().iter().map(|(n, t)| (n.to_string(), t.shape().to_vec())).collect();
        assert_eq!(held, model.fused().fused_shapes(&shapes), "{family}: the store's layout");
        let group = |n: &str| model.group_of(n);
        assert_eq!(param_count_by_group(&held, group), param_count_by_group(&shapes, group), "{family}: groups");
    }
}

#[test]
fn merge_needs_every_part_and_split_undoes_it() {
    const TABLE: &[Fusion] =
        &[Fusion { fused: "attn.qkv_proj", parts: &["attn.q_proj", "attn.k_proj", "attn.v_proj"] }];
    let shapes: Vec<(String, Vec<usize>)> = [("q", 4), ("k", 2), ("v", 2)]
        .iter()
        .flat_map(|&(p, rows)| {
            [(format!("l.0.attn.{p}_proj.weight"), vec![rows, 3]), (format!("l.0.attn.{p}_proj.bias"), vec![rows])]
        })
        .chain([("l.0.x_attn.q_proj.weight".to_string(), vec![4, 3])])
        .collect();
    let layout = FusedLayout::new(TABLE, &shapes).unwrap();
    assert!(layout.is_fused("l.0.attn.qkv_proj.weight") && layout.is_fused("l.0.attn.qkv_proj.bias"));
    assert!(layout.slot("l.0.x_attn.q_proj.weight").is_none(), "another module's q_proj is not a part");
    let slot = layout.slot("l.0.attn.v_proj.bias").unwrap();
    assert_eq!((slot.fused.as_str(), slot.start, slot.rows), ("l.0.attn.qkv_proj.bias", 6, 2));

    let store = |skip: &str| {
        let mut ps = ParamStore::new();
        for (i, (n, s)) in shapes.iter().enumerate().filter(|(_, (n, _))| n != skip) {
            ps.insert(n.clone(), &Tensor::rand_normal(0.0, 1.0, s, DType::F32, Device::Cpu, i as u64).unwrap())
                .unwrap();
        }
        ps
    };
    let e = layout.merge(store("l.0.attn.k_proj.bias")).unwrap_err().to_string();
    assert!(e.contains("l.0.attn.k_proj.bias") && e.contains("missing"), "{e}");

    let whole = store("");
    let merged = layout.merge(whole.clone()).unwrap();
    assert_eq!(merged.names(), ["l.0.attn.qkv_proj.weight", "l.0.attn.qkv_proj.bias", "l.0.x_attn.q_proj.weight"]);
    assert_eq!(merged.num_params(), whole.num_params());
    let named: Vec<(String, Tensor)> = merged.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    for (n, t) in layout.split(&named).unwrap() {
        assert_eq!(t.to_vec::<f32>().unwrap(), whole.get(&n).unwrap().to_vec::<f32>().unwrap(), "{n}");
        assert_eq!(layout.get(&merged, &n).unwrap().to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap(), "{n}");
    }
    // A fused store passes through unchanged (same handles).
    let again = layout.merge(merged.clone()).unwrap();
    assert_eq!(
        again.get("l.0.attn.qkv_proj.weight").unwrap().id(),
        merged.get("l.0.attn.qkv_proj.weight").unwrap().id()
    );
}

/// Hands out one batch again and again.
struct Repeat(Batch, u64);

impl BatchSource for Repeat {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        self.1 += 1;
        Some(Ok(self.0.clone()))
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "batches": self.1 })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        self.1 = position["batches"].as_u64().unwrap_or(0);
        Ok(())
    }
}

fn qwen_config() -> Qwen25VlConfig {
    Qwen25VlConfig::from_file(fixtures("qwen2_5_vl").join("config.json")).unwrap()
}

fn qwen_policy(cfg: &TrainConfig) -> VlaPolicy {
    let model = Qwen25Vl::random(qwen_config(), 3, DType::F32).unwrap();
    VlaPolicy::new(Box::new(model), cfg.policy.clone(), 7).unwrap()
}

fn qwen_batch() -> Batch {
    let case: std::collections::HashMap<String, Tensor> =
        io::load(fixtures("qwen2_5_vl").join("case_b2.safetensors"), &LoadOptions::default())
            .unwrap()
            .into_iter()
            .collect();
    let input: BackboneInput = common::qwen_case_input(&case);
    let b = input.input_ids.shape()[0];
    let actions: Vec<f32> = (0..b * 4 * 7).map(|i| if i % 7 == 6 { 1.0 } else { (i % 5) as f32 * 0.2 - 0.4 }).collect();
    Batch {
        input,
        actions: Tensor::from_vec(actions, &[b, 4, 7], Device::Cpu).unwrap(),
        mask: Tensor::ones(&[b, 4], DType::U8, Device::Cpu).unwrap(),
        state: None,
    }
}

#[test]
fn trainer_checkpoints_hold_checkpoint_names_and_resume_exactly() {
    let dir = tmp_dir("trainer");
    let mut cfg = TrainConfig::new("qwen2_5_vl", &dir, 4);
    cfg.policy = PolicyConfig {
        chunk: 4,
        head: HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] },
        ..Default::default()
    };
    cfg.optim.lr = 1e-3;
    cfg.run.checkpoint_every = 2;
    cfg.run.progress = false;
    let mut t = Trainer::new(cfg.clone(), qwen_policy(&cfg)).unwrap();
    let straight = t.run(&mut Repeat(qwen_batch(), 0)).unwrap().losses;

    // The weights file spells the backbone as its checkpoint does.
    let ckpt = dir.join("checkpoint-2");
    let file = SafeTensorsFile::open(ckpt.join("model.safetensors")).unwrap();
    let mut names: Vec<String> = file.names().iter().map(|n| n.to_string()).collect();
    names.sort();
    let shapes = qwen2_5_vl::param_shapes(&qwen_config());
    let mut expected: Vec<String> = shapes.into_iter().map(|(n, _)| n).collect();
    expected.extend(t.policy().params().names().iter().cloned());
    expected.sort();
    assert_eq!(names, expected);
    let opt = SafeTensorsFile::open(ckpt.join("optimizer.safetensors")).unwrap();
    assert!(opt.contains("model.layers.0.self_attn.k_proj.bias.exp_avg_sq"));
    assert!(opt.contains("visual.blocks.0.mlp.up_proj.weight.step"));
    assert!(opt.names().iter().all(|n| !n.contains("qkv_proj") && !n.contains("gate_up_proj")), "fused names on disk");

    // Resuming there starts from those weights (a fresh policy loading them predicts alike) and
    // reproduces the uninterrupted losses and weights bit for bit.
    let input = qwen_batch().input;
    let fresh = qwen_policy(&cfg);
    assert_eq!(fresh.load_weights(ckpt.join("model.safetensors")).unwrap(), names.len());
    // The trainer holds its output directory's lock until it ends.
    let straight_policy = t.into_policy();
    let mut resumed = Trainer::resume(cfg.clone(), qwen_policy(&cfg), &ckpt).unwrap();
    assert_eq!(resumed.step(), 2);
    assert_eq!(fresh.predict(&input).unwrap(), resumed.policy().predict(&input).unwrap());
    resumed.run(&mut Repeat(qwen_batch(), 0)).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(resumed.losses()), bits(&straight));
    let values = |p: &VlaPolicy| -> Vec<Vec<f32>> {
        p.named_params().unwrap().iter().map(|(_, t)| t.to_vec::<f32>().unwrap()).collect()
    };
    assert!(values(resumed.policy()) == values(&straight_policy), "weights after the resumed run");
    std::fs::remove_dir_all(&dir).unwrap();
}
