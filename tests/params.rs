//! The parameter store: names, errors, freezing (frozen parameters record nothing and get no
//! gradient), stable handles, counts, dtype conversion, and optimizers stepping a store.

use vlm4vla::engine::{AdamW, AdamWConfig, DType, Device, ParamStore, Tensor};

fn ones(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32, Device::Cpu).unwrap()
}

/// A small store shaped like a VLM checkpoint.
fn store() -> ParamStore {
    let mut ps = ParamStore::new();
    for (name, shape) in [
        ("model.vision_tower.patch_embed.weight", vec![4, 3]),
        ("model.vision_tower.norm.weight", vec![4]),
        ("model.layers.0.mlp.up_proj.weight", vec![8, 4]),
        ("model.layers.0.input_layernorm.weight", vec![4]),
        ("lm_head.weight", vec![5, 4]),
    ] {
        ps.insert(name, &ones(&shape)).unwrap();
    }
    ps
}

fn err_text<T>(r: vlm4vla::engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn insert_get_and_name_errors() {
    let mut ps = store();
    assert_eq!(ps.len(), 5);
    assert_eq!(ps.names()[2], "model.layers.0.mlp.up_proj.weight");
    let order: Vec<&str> = ps.iter().map(|(n, _)| n).collect();
    assert_eq!(order, ps.names().iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(ps.get("lm_head.weight").unwrap().shape(), &[5, 4]);
    assert!(ps.contains("lm_head.weight") && !ps.contains("lm_head.bias"));

    let e = err_text(ps.get("model.layers.7.mlp.up_proj.weight"));
    assert!(e.contains("model.layers.7.mlp.up_proj.weight"), "{e}");
    let e = err_text(ps.insert("lm_head.weight", &ones(&[1])));
    assert!(e.contains("lm_head.weight") && e.contains("already"), "{e}");
    assert_eq!(ps.len(), 5);
    assert!(ps.set_requires_grad("nope", false).is_err());
    assert!(ps.requires_grad("nope").is_err());
    assert!(ps.to_dtype(DType::I64).is_err());
}

#[test]
fn handles_are_stable_and_share_storage() {
    let mut ps = ParamStore::new();
    let src = Tensor::from_vec(vec![1f32, 2., 3.], &[3], Device::Cpu).unwrap();
    let h = ps.insert("w", &src).unwrap();
    assert!(h.is_variable());
    assert_eq!(ps.get("w").unwrap().id(), h.id());
    assert_eq!(ps.get("w").unwrap().id(), ps.get("w").unwrap().id());

    ps.set_requires_grad("w", false).unwrap();
    let frozen = ps.get("w").unwrap();
    assert_ne!(frozen.id(), h.id());
    assert_eq!(ps.get("w").unwrap().id(), frozen.id());
    ps.set_requires_grad("w", true).unwrap();
    assert_eq!(ps.get("w").unwrap().id(), h.id(), "unfreezing hands out the same variable again");

    // Writes through any handle are seen by the source tensor (same storage).
    h.assign(&Tensor::from_vec(vec![7f32, 8., 9.], &[3], Device::Cpu).unwrap()).unwrap();
    assert_eq!(src.to_vec::<f32>().unwrap(), vec![7., 8., 9.]);
    assert_eq!(frozen.to_vec::<f32>().unwrap(), vec![7., 8., 9.]);

    // A non-contiguous source is stored contiguous (so optimizers can update it in place).
    let t = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3], Device::Cpu).unwrap().t().unwrap();
    let h = ps.insert("t", &t).unwrap();
    assert!(h.is_contiguous());
    assert_eq!(h.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
}

#[test]
fn frozen_params_record_nothing_and_get_no_gradient() {
    let mut ps = store();
    assert_eq!(ps.freeze_prefix("model.vision_tower."), 2);
    let vis = ps.get("model.vision_tower.patch_embed.weight").unwrap();
    let head = ps.get("lm_head.weight").unwrap();
    assert!(!vis.tracks_grad() && !vis.is_variable());
    assert!(head.is_variable());

    // Ops on frozen parameters alone record nothing.
    let feats = vis.tanh().unwrap().matmul(&ones(&[3, 2])).unwrap();
    assert!(!feats.tracks_grad());
    assert!(feats.backward().is_err(), "nothing to differentiate");

    // Mixed: only the trainable parameter gets a gradient.
    let x = ones(&[2, 4]);
    let loss = x.matmul(&vis).unwrap().sum_all().unwrap().add(&head.sqr().unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(&head).is_some());
    assert!(grads.get(&vis).is_none());
    assert_eq!(grads.len(), 1);

    // The handles of trainable parameters are those the gradients are keyed by.
    let trainable = ps.trainable();
    assert_eq!(trainable.len(), 3);
    assert!(trainable.iter().all(|(n, _)| !n.starts_with("model.vision_tower.")));
    assert!(trainable.iter().any(|(_, t)| t.id() == head.id()));
    assert_eq!(ps.trainable_tensors().len(), 3);

    assert_eq!(ps.unfreeze_prefix("model.vision_tower.norm"), 1);
    assert!(ps.requires_grad("model.vision_tower.norm.weight").unwrap());
    assert!(!ps.requires_grad("model.vision_tower.patch_embed.weight").unwrap());
    assert_eq!(ps.freeze_prefix("no.such.prefix"), 0);
    assert_eq!(ps.freeze_prefix(""), 5);
    assert!(ps.trainable().is_empty());
}

#[test]
fn optimizer_on_a_store_leaves_frozen_params_alone() {
    let mut ps = store();
    ps.freeze_prefix("model.vision_tower.");
    let loss = ps.iter().map(|(_, t)| t.sqr().unwrap().sum_all().unwrap()).reduce(|a, b| a.add(&b).unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    opt.step(&ps, &grads, 0.1).unwrap();
    assert!(ps.get("model.vision_tower.norm.weight").unwrap().to_vec::<f32>().unwrap().iter().all(|&v| v == 1.0));
    assert!(ps.get("lm_head.weight").unwrap().to_vec::<f32>().unwrap().iter().all(|&v| v < 1.0));
    assert_eq!(opt.step_count("model.vision_tower.norm.weight"), None);
    assert_eq!(opt.step_count("lm_head.weight"), Some(1));
}

#[test]
fn counts() {
    let mut ps = store();
    assert_eq!(ps.num_params(), 12 + 4 + 32 + 4 + 20);
    assert_eq!(ps.num_trainable(), ps.num_params());
    ps.freeze_prefix("model.vision_tower.");
    assert_eq!(ps.num_trainable(), 32 + 4 + 20);
    let by = ps.counts_by_group(|n| {
        if n.starts_with("model.vision_tower.") {
            "vision".to_string()
        } else if n.starts_with("model.layers.") {
            "llm".to_string()
        } else {
            "head".to_string()
        }
    });
    let want: Vec<(String, usize)> = vec![("head".into(), 20), ("llm".into(), 36), ("vision".into(), 16)];
    assert_eq!(by.into_iter().collect::<Vec<_>>(), want);
}

#[test]
fn integer_buffers_stay_frozen() {
    let mut ps = ParamStore::new();
    let ids = Tensor::from_vec(vec![0i64, 1, 2], &[3], Device::Cpu).unwrap();
    let h = ps.insert("position_ids", &ids).unwrap();
    assert!(!h.tracks_grad());
    assert!(!ps.requires_grad("position_ids").unwrap());
    let e = err_text(ps.set_requires_grad("position_ids", true));
    assert!(e.contains("position_ids"), "{e}");
    assert_eq!(ps.unfreeze_prefix("position"), 0);
    ps.to_dtype(DType::BF16).unwrap();
    assert_eq!(ps.get("position_ids").unwrap().dtype(), DType::I64);
}

#[test]
fn to_dtype_converts_and_keeps_flags() {
    let mut ps = store();
    ps.freeze_prefix("lm_head.");
    ps.to_dtype(DType::BF16).unwrap();
    for (name, t) in ps.iter() {
        assert_eq!(t.dtype(), DType::BF16, "{name}");
        assert_eq!(t.to_vec::<f32>().unwrap().iter().sum::<f32>(), t.elem_count() as f32);
    }
    assert!(!ps.requires_grad("lm_head.weight").unwrap());
    assert!(ps.get("lm_head.weight").unwrap().to_dtype(DType::F32).is_ok());
    let w = ps.get("model.layers.0.mlp.up_proj.weight").unwrap();
    assert!(w.is_variable());
    assert_eq!(ps.get("model.layers.0.mlp.up_proj.weight").unwrap().id(), w.id());
}
