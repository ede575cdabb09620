//! The VLA policy on a toy backbone: output shapes, the FCDecoder's initialisation, the masked
//! loss (against a hand-computed reference, and blind to anything past the mask), gripper
//! accuracy, freezing, gradients reaching every trainable parameter, and weight loading.

use vlm4vla::engine::{AdamW, AdamWConfig, DType, Device, GradStore, Tensor};
use vlm4vla::models::vla::{
    HeadConfig, HeadOutput, LatentCombine, PolicyConfig, TrainableParts, VlaPolicy, ACTION_QUERY,
};
use vlm4vla::models::{BackboneInput, ParamGroup};
use vlm4vla::train::toy::{ToyBackbone, ToyConfig};

const CHUNK: usize = 4;

fn small_head() -> HeadConfig {
    HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] }
}

fn policy_with(cfg: PolicyConfig) -> VlaPolicy {
    let bb = ToyBackbone::new(ToyConfig::default(), 3).unwrap();
    VlaPolicy::new(Box::new(bb), cfg, 11).unwrap()
}

fn policy() -> VlaPolicy {
    policy_with(PolicyConfig { chunk: CHUNK, head: small_head(), ..Default::default() })
}

/// Three rows, left-padded to length 4: [pad, BOS, IMG, word], [BOS, IMG, filler, word], ...
fn input(b: usize, seed: u64) -> BackboneInput {
    let pixel_values = Tensor::rand_uniform(0.0, 1.0, &[b, 3, 8, 8], DType::F32, Device::Cpu, seed).unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut kind = Vec::new();
    for r in 0..b {
        if r % 2 == 0 {
            ids.extend([0i64, 1, 2, 3 + (r % 3) as i64]);
            mask.extend([0u8, 1, 1, 1]);
            kind.extend([0u8, 0, 1, 0]);
        } else {
            ids.extend([1i64, 2, 7, 3 + (r % 3) as i64]);
            mask.extend([1u8, 1, 1, 1]);
            kind.extend([0u8, 1, 0, 0]);
        }
    }
    BackboneInput {
        pixel_values,
        image_grid_thw: None,
        input_ids: Tensor::from_vec(ids, &[b, 4], Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(mask, &[b, 4], Device::Cpu).unwrap(),
        token_type: Tensor::from_vec(kind, &[b, 4], Device::Cpu).unwrap(),
    }
}

/// Targets: arm values in [-0.9, 0.9], gripper in {0, 1}.
fn targets(b: usize, seed: u64) -> Tensor {
    let a = Tensor::rand_uniform(-0.9, 0.9, &[b, CHUNK, 7], DType::F32, Device::Cpu, seed).unwrap();
    let v: Vec<f32> = a.to_vec::<f32>().unwrap();
    let v: Vec<f32> = v.iter().enumerate().map(|(i, &x)| if i % 7 == 6 { f32::from(x > 0.0) } else { x }).collect();
    Tensor::from_vec(v, &[b, CHUNK, 7], Device::Cpu).unwrap()
}

fn all_grads(p: &VlaPolicy, grads: &GradStore) -> Vec<(String, Vec<f32>)> {
    p.trainable_params().iter().map(|(n, t)| (n.clone(), grads.get(t).unwrap().to_vec::<f32>().unwrap())).collect()
}

#[test]
fn forward_and_predict_shapes() {
    for (latent, combine) in [(1, LatentCombine::Flatten), (3, LatentCombine::Flatten), (2, LatentCombine::Mean)] {
        let p = policy_with(PolicyConfig {
            chunk: CHUNK,
            latent,
            latent_combine: combine,
            head: small_head(),
            ..Default::default()
        });
        let x = input(3, 1);
        let out = p.forward(&x).unwrap();
        assert_eq!(out.arm.shape(), &[3, CHUNK, 6]);
        assert_eq!(out.gripper_logits.as_ref().unwrap().shape(), &[3, CHUNK]);
        assert!(out.arm.to_vec::<f32>().unwrap().iter().all(|v| v.abs() < 1.0));
        let expected_in = if combine == LatentCombine::Flatten { latent * 32 } else { 32 };
        assert_eq!(p.head().in_features(), expected_in);
        assert_eq!(p.params().get(ACTION_QUERY).unwrap().shape(), &[latent, 32]);

        let pred = p.predict(&x).unwrap();
        assert_eq!(pred.len(), 3);
        let arm = out.arm.to_vec::<f32>().unwrap();
        let logits = out.gripper_logits.as_ref().unwrap().to_vec::<f32>().unwrap();
        for (r, chunk) in pred.iter().enumerate() {
            assert_eq!(chunk.len(), CHUNK);
            for (s, a) in chunk.iter().enumerate() {
                let i = r * CHUNK + s;
                assert_eq!(&a[..6], &arm[i * 6..i * 6 + 6]);
                assert_eq!(a[6], if logits[i] >= 0.0 { 1.0 } else { -1.0 });
            }
        }
    }
}

#[test]
fn paper_head_has_xavier_weights_zero_biases_and_zero_query() {
    let p = policy_with(PolicyConfig::default());
    let ps = p.params();
    let expect = [
        ("trunk.0", 32, 16),
        ("trunk.1", 16, 1024),
        ("arm.0", 1024, 1024),
        ("arm.1", 1024, 512),
        ("arm.2", 512, 256),
        ("arm.3", 256, 60),
        ("gripper.0", 1024, 1024),
        ("gripper.1", 1024, 512),
        ("gripper.2", 512, 256),
        ("gripper.3", 256, 10),
    ];
    assert_eq!(ps.len(), 1 + 2 * expect.len());
    for (name, fan_in, fan_out) in expect {
        let w = ps.get(&format!("vla.head.{name}.weight")).unwrap();
        assert_eq!(w.shape(), &[fan_out, fan_in], "{name}");
        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let v = w.to_vec::<f64>().unwrap();
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(max <= bound && max > 0.9 * bound, "{name}: max |w| {max} vs bound {bound}");
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let uniform_std = bound / 3f64.sqrt();
        assert!(mean.abs() < 4.0 * uniform_std / n.sqrt() + 1e-12, "{name}: mean {mean}");
        if n > 5000.0 {
            assert!((std / uniform_std - 1.0).abs() < 0.02, "{name}: std {std} vs {uniform_std}");
        }
        let b = ps.get(&format!("vla.head.{name}.bias")).unwrap();
        assert_eq!(b.shape(), &[fan_out]);
        assert!(b.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0), "{name} bias");
    }
    let q = ps.get(ACTION_QUERY).unwrap();
    assert_eq!(q.shape(), &[1, 32]);
    assert!(q.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
    // Two layers drawn from the same seed are not the same draw.
    let a = ps.get("vla.head.arm.0.weight").unwrap().to_vec::<f32>().unwrap();
    let g = ps.get("vla.head.gripper.0.weight").unwrap().to_vec::<f32>().unwrap();
    assert_ne!(a, g);
}

#[test]
fn loss_matches_a_hand_computed_reference() {
    let p = policy_with(PolicyConfig {
        chunk: CHUNK,
        head: small_head(),
        gripper_loss_ratio: 0.3,
        huber_delta: 0.2,
        ..Default::default()
    });
    let x = input(3, 2);
    let out = p.forward(&x).unwrap();
    let y = targets(3, 5);
    let mask_v = [1u8, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1];
    let mask = Tensor::from_vec(mask_v.to_vec(), &[3, CHUNK], Device::Cpu).unwrap();
    let l = p.loss(&out, &y, &mask).unwrap();
    let v = l.values().unwrap();

    let arm = out.arm.to_vec::<f64>().unwrap();
    let logits = out.gripper_logits.as_ref().unwrap().to_vec::<f64>().unwrap();
    let yv = y.to_vec::<f64>().unwrap();
    let (mut h, mut bce, mut n, mut correct) = (0.0, 0.0, 0usize, 0usize);
    for i in 0..3 * CHUNK {
        if mask_v[i] == 0 {
            continue;
        }
        n += 1;
        for d in 0..6 {
            let e = (arm[i * 6 + d] - yv[i * 7 + d]).abs();
            h += if e < 0.2 { 0.5 * e * e } else { 0.2 * (e - 0.1) };
        }
        let (z, t) = (logits[i], yv[i * 7 + 6]);
        bce += z.max(0.0) - z * t + (-z.abs()).exp().ln_1p();
        correct += usize::from((z >= 0.0) == (t >= 0.5));
    }
    let (h, bce) = (h / (n as f64 * 6.0), bce / n as f64);
    assert_eq!(v.valid_steps, n);
    assert!((v.arm - h).abs() < 1e-6 * h.max(1e-3), "arm {} vs {h}", v.arm);
    assert!((v.gripper - bce).abs() < 1e-6, "gripper {} vs {bce}", v.gripper);
    let total = l.loss.to_scalar::<f64>().unwrap();
    assert!((total - (h + 0.3 * bce)).abs() < 1e-6, "loss {total}");
    assert_eq!(v.loss, total);
    assert_eq!(v.gripper_accuracy, correct as f64 / n as f64);
}

#[test]
fn masked_steps_change_neither_loss_nor_gradients() {
    let p = policy();
    let x = input(3, 4);
    let y = targets(3, 6);
    let mask_v = [1u8, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0];
    let mask = Tensor::from_vec(mask_v.to_vec(), &[3, CHUNK], Device::Cpu).unwrap();
    let mut garbage = y.to_vec::<f32>().unwrap();
    for (i, &m) in mask_v.iter().enumerate() {
        if m == 0 {
            for d in 0..7 {
                garbage[i * 7 + d] = if d == 0 { f32::NAN } else { 37.0 * (d as f32 - 3.0) };
            }
        }
    }
    let y2 = Tensor::from_vec(garbage, &[3, CHUNK, 7], Device::Cpu).unwrap();
    let run = |y: &Tensor| {
        let l = p.forward_loss(&x, y, &mask).unwrap();
        let grads = l.loss.backward().unwrap();
        let v = l.values().unwrap();
        (l.loss.to_scalar::<f32>().unwrap(), v.arm, v.gripper, all_grads(&p, &grads))
    };
    let (a, b) = (run(&y), run(&y2));
    assert!(a.0.is_finite());
    assert_eq!(a.0.to_bits(), b.0.to_bits());
    assert_eq!((a.1, a.2), (b.1, b.2));
    assert_eq!(a.3, b.3);

    // ... while a change at a valid step does change the loss.
    let mut v = y.to_vec::<f32>().unwrap();
    v[0] += 0.5;
    let y3 = Tensor::from_vec(v, &[3, CHUNK, 7], Device::Cpu).unwrap();
    assert_ne!(run(&y3).0, a.0);

    // An all-masked batch has zero loss and no NaN.
    let none = Tensor::zeros(&[3, CHUNK], DType::U8, Device::Cpu).unwrap();
    let l = p.forward_loss(&x, &y2, &none).unwrap();
    assert_eq!(l.loss.to_scalar::<f32>().unwrap(), 0.0);
    let v = l.values().unwrap();
    assert_eq!((v.valid_steps, v.gripper_accuracy), (0, 0.0));
}

#[test]
fn gripper_accuracy_counts_valid_steps_only() {
    let p = policy_with(PolicyConfig { chunk: 2, head: small_head(), ..Default::default() });
    // logits: row 0 [2, -1], row 1 [0, -3]; targets [1, 0], [0, 1]; mask [1, 1], [1, 0].
    // Valid steps: (2 → open, 1) right, (-1 → closed, 0) right, (0 → open, 0) wrong.
    let out = HeadOutput {
        arm: Tensor::zeros(&[2, 2, 6], DType::F32, Device::Cpu).unwrap(),
        gripper_logits: Some(Tensor::from_vec(vec![2f32, -1., 0., -3.], &[2, 2], Device::Cpu).unwrap()),
    };
    let mut y = vec![0f32; 2 * 2 * 7];
    for (i, t) in [1f32, 0., 0., 1.].iter().enumerate() {
        y[i * 7 + 6] = *t;
    }
    let y = Tensor::from_vec(y, &[2, 2, 7], Device::Cpu).unwrap();
    let mask = Tensor::from_vec(vec![1f32, 1., 1., 0.], &[2, 2], Device::Cpu).unwrap();
    let l = p.loss(&out, &y, &mask).unwrap().values().unwrap();
    assert_eq!(l.valid_steps, 3);
    assert!((l.gripper_accuracy - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(l.arm, 0.0);

    // A gripper target outside [0, 1] at a valid step is named.
    let mut bad = y.to_vec::<f32>().unwrap();
    bad[7 + 6] = -1.0;
    let bad = Tensor::from_vec(bad, &[2, 2, 7], Device::Cpu).unwrap();
    let e = p.loss(&out, &bad, &mask).unwrap_err().to_string();
    assert!(e.contains("gripper target -1") && e.contains("chunk step 1"), "{e}");
}

/// A token id outside the vocabulary in user input is an error naming the id: the toy backbone
/// passes its ids unchecked to the embedding, whose CPU kernel checks every index as it gathers.
#[test]
fn a_bad_token_id_is_an_error_naming_it() {
    let p = policy();
    let mut x = input(3, 2);
    let mut ids = x.input_ids.to_vec::<i64>().unwrap();
    ids[5] = 4242;
    x.input_ids = Tensor::from_vec(ids, x.input_ids.shape(), Device::Cpu).unwrap();
    let e = p.forward(&x).unwrap_err().to_string();
    assert!(e.contains("index_select") && e.contains("index 4242"), "{e}");
    x.input_ids = Tensor::from_vec(vec![-3i64; 12], &[3, 4], Device::Cpu).unwrap();
    let e = p.forward(&x).unwrap_err().to_string();
    assert!(e.contains("index -3"), "{e}");
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    // With the query at zero, a one-layer backbone gives its query projection no gradient (the
    // query row's normed input is zero and only that row reaches the head); one step moves the
    // query off zero.
    let p = policy();
    one_step(&p);
    let l = p.forward_loss(&input(3, 8), &targets(3, 9), &Tensor::ones(&[3, CHUNK], DType::U8, Device::Cpu).unwrap());
    let grads = l.unwrap().loss.backward().unwrap();
    let named = p.trainable_params();
    assert_eq!(named.len(), p.backbone().params().len() + p.params().len());
    for (name, g) in all_grads(&p, &grads) {
        assert!(g.iter().any(|&x| x != 0.0), "{name} has an all-zero gradient");
    }
}

fn one_step(p: &VlaPolicy) {
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-2, ..Default::default() }).unwrap();
    let l = p.forward_loss(&input(3, 10), &targets(3, 11), &Tensor::ones(&[3, CHUNK], DType::U8, Device::Cpu).unwrap());
    let grads = l.unwrap().loss.backward().unwrap();
    opt.step(&p.trainable_params(), &grads, 1e-2).unwrap();
}

fn parts(groups: &[ParamGroup], head: bool) -> TrainableParts {
    TrainableParts { groups: groups.to_vec(), head, llm_last_layers: None }
}

fn snapshot(p: &VlaPolicy) -> Vec<(String, Vec<f32>)> {
    p.named_params().unwrap().iter().map(|(n, t)| (n.clone(), t.to_vec::<f32>().unwrap())).collect()
}

#[test]
fn frozen_parameters_do_not_move() {
    // Head only: every backbone parameter stays, every head parameter moves.
    let mut p = policy();
    p.set_trainable(&parts(&[], true)).unwrap();
    assert!(p.trainable_params().iter().all(|(n, _)| n.starts_with("vla.")));
    let before = snapshot(&p);
    one_step(&p);
    for ((name, a), (_, b)) in before.iter().zip(snapshot(&p)) {
        if name.starts_with("vla.") {
            assert_ne!(a, &b, "{name} should train");
        } else {
            assert_eq!(a, &b, "{name} should be frozen");
        }
    }

    // Vision frozen: only `vision.*` stays.
    let mut p = policy();
    p.set_trainable(&parts(&[ParamGroup::Connector, ParamGroup::LanguageModel, ParamGroup::Embeddings], true)).unwrap();
    let before = snapshot(&p);
    one_step(&p);
    for ((name, a), (_, b)) in before.iter().zip(snapshot(&p)) {
        assert_eq!(name.starts_with("vision."), a == &b, "{name}");
    }

    // Backbone only, head frozen; nothing at all is an error.
    let mut p = policy();
    p.set_trainable(&parts(&[ParamGroup::LanguageModel], false)).unwrap();
    assert!(p.trainable_params().iter().all(|(n, _)| n.starts_with("model.layers.") || n == "model.norm.weight"));
    assert!(p.set_trainable(&parts(&[], false)).unwrap_err().to_string().contains("nothing to train"));
}

#[test]
fn weights_round_trip_and_unknown_names_are_named() {
    let dir = std::env::temp_dir().join(format!("vlm4vla-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = policy();
    one_step(&a);
    let named = a.named_params().unwrap();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let path = dir.join("w.safetensors");
    vlm4vla::engine::io::save(&path, &refs, None).unwrap();
    let b = policy();
    assert_eq!(b.load_weights(&path).unwrap(), named.len());
    let x = input(3, 12);
    assert_eq!(a.predict(&x).unwrap(), b.predict(&x).unwrap());

    let stray = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
    vlm4vla::engine::io::save(dir.join("bad.safetensors"), &[("vla.head.nope.weight", &stray)], None).unwrap();
    let e = b.load_weights(dir.join("bad.safetensors")).unwrap_err().to_string();
    assert!(e.contains("vla.head.nope.weight") && e.contains("bad.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_policy_configs_are_named() {
    let bb = || Box::new(ToyBackbone::new(ToyConfig::default(), 0).unwrap());
    let e = VlaPolicy::new(bb(), PolicyConfig { chunk: 0, ..Default::default() }, 0).unwrap_err().to_string();
    assert!(e.contains("policy.chunk"), "{e}");
    let e = VlaPolicy::new(bb(), PolicyConfig { huber_delta: 0.0, ..Default::default() }, 0).unwrap_err().to_string();
    assert!(e.contains("policy.huber_delta"), "{e}");
    let head = HeadConfig { branch_hidden: vec![8, 0], ..Default::default() };
    let e = VlaPolicy::new(bb(), PolicyConfig { head, ..Default::default() }, 0).unwrap_err().to_string();
    assert!(e.contains("head.branch_hidden"), "{e}");
}

#[test]
fn state_row_feeds_the_queries_and_is_checked() {
    let p = policy_with(PolicyConfig { chunk: CHUNK, head: small_head(), state_dim: 3, ..PolicyConfig::default() });
    let x = input(2, 5);
    let s1 = Tensor::from_vec(vec![0.1f32, 0.2, 0.3, -0.4, 0.5, 0.6], &[2, 3], Device::Cpu).unwrap();
    let s2 = Tensor::from_vec(vec![0.9f32, -0.2, 0.3, -0.4, 0.5, 0.6], &[2, 3], Device::Cpu).unwrap();
    let a = p.forward_with_state(&x, Some(&s1)).unwrap().arm.to_vec::<f32>().unwrap();
    let b = p.forward_with_state(&x, Some(&s2)).unwrap().arm.to_vec::<f32>().unwrap();
    let per_row = a.len() / 2;
    // Row 0's state changed, row 1's did not: only row 0's actions move.
    assert!(a[..per_row].iter().zip(&b[..per_row]).any(|(u, v)| (u - v).abs() > 1e-6));
    assert_eq!(a[per_row..], b[per_row..]);
    // The state projection learns: it gets a gradient.
    let l = p
        .forward_loss_with_state(
            &x,
            Some(&s1),
            &targets(2, 6),
            &Tensor::ones(&[2, CHUNK], DType::U8, Device::Cpu).unwrap(),
        )
        .unwrap();
    let g = l.loss.backward().unwrap();
    let w = p.params().get("vla.state_proj.weight").unwrap();
    assert!(g.get(&w).unwrap().to_vec::<f32>().unwrap().iter().any(|v| *v != 0.0));
    // Missing, unexpected and wrongly shaped states are errors, not panics.
    assert!(p.forward(&x).unwrap_err().to_string().contains("state_dim"));
    let bad = Tensor::zeros(&[2, 4], DType::F32, Device::Cpu).unwrap();
    assert!(p.forward_with_state(&x, Some(&bad)).is_err());
    let plain = policy();
    assert!(plain.forward_with_state(&x, Some(&s1)).unwrap_err().to_string().contains("state_dim = 0"));
}
