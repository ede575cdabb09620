//! Kosmos-2 against transformers 5.24.0: the committed fixtures of `tools/golden/gen_kosmos2.py`
//! (a tiny random `Kosmos2ForConditionalGeneration`, eager, f32) give image features, every
//! vision and decoder layer output, the last hidden state, the logits and every parameter's
//! gradient of `Σ probe·last_hidden + Σ probe2·logits`, for a batch of one and a left-padded
//! batch of two. Plus the processor (pixels, token layout), the real parameter count, and
//! errors on bad input.
//!
//! Tolerances (FIXTURES.md): forward `|ours − ref| ≤ 1e-5 + 1e-5·|ref|`; gradients
//! `|ours − ref| ≤ 1e-4 · ‖∇‖` (the global gradient norm: some gradients, e.g. key biases, are
//! zero in exact arithmetic and hold only rounding noise); pixels `≤ 1e-6`. Padded rows of the
//! left-padded batch are not compared: transformers' padded query rows attend to an arbitrary
//! set of keys (its additive `finfo.min` masks saturate), ours see none; real rows never read
//! them and the fixture probes are zero there.

mod common;

use std::path::PathBuf;
use vlm4vla::engine::{DType, Device, ParamStore, SafeTensorsFile, Tensor};
use vlm4vla::models::kosmos2::{num_params, param_shapes, Kosmos2, Kosmos2Config, Kosmos2Processor};
use vlm4vla::models::{Backbone, BackboneInput};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kosmos2").join(name)
}

fn weights() -> ParamStore {
    let st = SafeTensorsFile::open(fixture("weights.safetensors")).unwrap();
    let mut ps = ParamStore::new();
    for name in st.names() {
        ps.insert(name, &st.get(name, None).unwrap()).unwrap();
    }
    ps
}

fn model() -> Kosmos2 {
    let cfg = Kosmos2Config::from_file(fixture("config.json")).unwrap();
    assert_eq!(cfg, Kosmos2Config::tiny(), "the fixture config is the built-in tiny config");
    Kosmos2::from_params(cfg, weights()).unwrap()
}

fn input(case: &SafeTensorsFile) -> BackboneInput {
    BackboneInput {
        pixel_values: case.get("pixel_values", None).unwrap(),
        image_grid_thw: None,
        input_ids: case.get("input_ids", None).unwrap(),
        attention_mask: case.get("attention_mask", None).unwrap(),
        token_type: case.get("image_embeds_position_mask", None).unwrap(),
    }
}

/// Largest `|a − b|` and largest `|a − b| / (atol + rtol·|b|)` over the rows (`[B, T, ...]`
/// flattened to `B·T` rows) where `rows` is true (all rows when `None`).
fn compare(ours: &Tensor, reference: &Tensor, rows: Option<&[bool]>, atol: f64, rtol: f64) -> (f64, f64) {
    assert_eq!(ours.shape(), reference.shape());
    let a = ours.to_vec::<f64>().unwrap();
    let b = reference.to_vec::<f64>().unwrap();
    let width = match rows {
        Some(r) => a.len() / r.len(),
        None => a.len().max(1),
    };
    let (mut max_abs, mut max_ratio) = (0f64, 0f64);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if rows.is_some_and(|r| !r[i / width]) {
            continue;
        }
        assert!(x.is_finite(), "non-finite value {x} at {i}");
        let d = (x - y).abs();
        max_abs = max_abs.max(d);
        max_ratio = max_ratio.max(d / (atol + rtol * y.abs()));
    }
    (max_abs, max_ratio)
}

fn parity(case_name: &str) {
    let m = model();
    let case = SafeTensorsFile::open(fixture(case_name)).unwrap();
    let inp = input(&case);
    let real: Vec<bool> = inp.attention_mask.to_vec::<i64>().unwrap().iter().map(|&x| x != 0).collect();
    let trace = m.forward_trace(&inp).unwrap();

    let check = |what: &str, ours: &Tensor, rows: Option<&[bool]>| {
        let reference = case.get(what, None).unwrap();
        let (abs, ratio) = compare(ours, &reference, rows, 1e-5, 1e-5);
        println!("{case_name} {what}: max abs err {abs:.3e} (tolerance ratio {ratio:.3})");
        assert!(ratio <= 1.0, "{case_name} {what}: max abs err {abs:e} exceeds 1e-5 + 1e-5·|ref|");
    };
    check("image_features", &trace.image_features, None);
    for (i, t) in trace.vision_layers.iter().enumerate() {
        check(&format!("vision_layer.{i}"), t, None);
    }
    for (i, t) in trace.layers.iter().enumerate() {
        check(&format!("layer.{i}"), t, Some(&real));
    }
    check("last_hidden", &trace.last_hidden, Some(&real));
    check("logits", &trace.logits, Some(&real));

    let probe = case.get("probe", None).unwrap();
    let probe2 = case.get("probe2", None).unwrap();
    let loss = common::probe_loss(&trace.last_hidden, &trace.logits, &probe, &probe2);
    let ref_loss = case.get("loss", None).unwrap().to_vec::<f64>().unwrap()[0];
    let our_loss = loss.to_scalar::<f64>().unwrap();
    println!("{case_name} loss: ours {our_loss} reference {ref_loss}");
    let grads = loss.backward().unwrap();

    let ref_grads: Vec<(String, Tensor)> = case
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("grad.").map(|p| (p.to_string(), case.get(n, None).unwrap())))
        .collect();
    assert_eq!(ref_grads.len(), m.checkpoint_params().unwrap().len(), "one reference gradient per parameter");
    let by_name = m.fused().split_grads(m.params(), &grads).unwrap();
    let norm = ref_grads
        .iter()
        .map(|(_, g)| g.to_vec::<f64>().unwrap().iter().map(|x| x * x).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    let (mut worst, mut worst_name) = (0f64, String::new());
    for (name, reference) in &ref_grads {
        let ours = by_name.get(name).unwrap_or_else(|| panic!("{case_name}: no gradient for {name}"));
        let (abs, _) = compare(ours, reference, None, 0.0, 1.0);
        if abs > worst {
            (worst, worst_name) = (abs, name.clone());
        }
        assert!(
            abs <= 1e-4 * norm,
            "{case_name}: gradient of {name}: max abs err {abs:e} > 1e-4 × ‖∇‖ = {:e}",
            1e-4 * norm
        );
    }
    println!(
        "{case_name} gradients: global norm {norm:.4e}, largest abs err {worst:.3e} ({:.3e} × norm) at {worst_name}",
        worst / norm
    );
}

#[test]
fn parity_batch_of_one() {
    parity("case_b1.safetensors");
}

#[test]
fn parity_left_padded_batch_of_two() {
    parity("case_b2.safetensors");
}

#[test]
fn processor_pixels_match_clip_image_processor() {
    let cfg = Kosmos2Config::tiny();
    let proc = Kosmos2Processor::new(&cfg);
    let st = SafeTensorsFile::open(fixture("pixels.safetensors")).unwrap();
    for i in 0..2 {
        let img = st.get(&format!("image.{i}"), None).unwrap();
        let (h, w) = (img.shape()[0], img.shape()[1]);
        let ours = proc.preprocess(&img.to_vec::<u8>().unwrap(), h, w).unwrap();
        let reference = st.get(&format!("pixel_values.{i}"), None).unwrap();
        let (abs, _) = compare(&ours, &reference, None, 0.0, 1.0);
        println!("pixels {i}: max abs err {abs:.3e}");
        assert!(abs <= 1e-6, "image {i}: max abs err {abs:e}");
    }
}

#[test]
fn processor_token_layout() {
    // The real layout: [<s>, <image>, 4..67, </image>, prompt…], image mask on the 64 placeholders.
    let proc = Kosmos2Processor::new(&Kosmos2Config::kosmos2_patch14_224());
    let (ids, mask) = proc.prompt(&[64012, 2127, 9]);
    let mut want = vec![0i64, 64003];
    want.extend(4..68);
    want.extend([64004, 64012, 2127, 9]);
    assert_eq!(ids, want);
    let mut want_mask = vec![0u8; 2];
    want_mask.extend([1u8; 64]);
    want_mask.extend([0u8; 4]);
    assert_eq!(mask, want_mask);

    // The tiny processor reproduces the fixtures' batches (left padding with id 1).
    let proc = Kosmos2Processor::new(&Kosmos2Config::tiny());
    let px = Tensor::zeros(&[3, 28, 28], DType::F32, Device::Cpu).unwrap();
    for (case, prompts) in [
        ("case_b1.safetensors", vec![vec![64i64, 17, 99, 5, 42]]),
        ("case_b2.safetensors", vec![vec![23, 77, 8, 120, 13, 56, 91], vec![33, 9, 102]]),
    ] {
        let st = SafeTensorsFile::open(fixture(case)).unwrap();
        let batch = proc.collate(&vec![px.clone(); prompts.len()], &prompts).unwrap();
        assert_eq!(
            batch.input_ids.to_vec::<i64>().unwrap(),
            st.get("input_ids", None).unwrap().to_vec::<i64>().unwrap()
        );
        for (ours, name) in
            [(&batch.attention_mask, "attention_mask"), (&batch.token_type, "image_embeds_position_mask")]
        {
            assert_eq!(ours.dtype(), DType::U8);
            assert_eq!(
                ours.to_vec::<i64>().unwrap(),
                st.get(name, None).unwrap().to_vec::<i64>().unwrap(),
                "{case} {name}"
            );
        }
        assert_eq!(batch.pixel_values.shape(), &[prompts.len(), 3, 28, 28]);
    }
}

#[test]
fn real_parameter_count() {
    let cfg = Kosmos2Config::builtin("kosmos-2-patch14-224").unwrap();
    assert_eq!(num_params(&cfg), 1_664_485_376);
    let shapes = param_shapes(&cfg);
    assert!(!shapes.iter().any(|(n, _)| n == "text_model.lm_head.weight"), "tied: no lm_head on disk");
    let count = |prefix: &str| -> usize {
        shapes.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    assert_eq!(count("vision_model."), 303_179_776);
    assert_eq!(count("image_to_text_projection."), 19_015_680);
    assert_eq!(count("text_model."), 1_342_289_920);
    use vlm4vla::models::kosmos2::group_of;
    use vlm4vla::models::ParamGroup;
    let by_group = |g: ParamGroup| -> usize {
        shapes.iter().filter(|(n, _)| group_of(n) == g).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    assert_eq!(by_group(ParamGroup::Embeddings), 133_195_776);
    assert_eq!(by_group(ParamGroup::LanguageModel), 1_342_289_920 - 133_195_776);
    assert_eq!(by_group(ParamGroup::Connector), 19_015_680);
    // The class defaults parse to the same config.
    assert_eq!(Kosmos2Config::from_json(r#"{"model_type": "kosmos-2"}"#).unwrap(), cfg);
}

/// `Σ probe·last_hidden + Σ probe2·logits` with fixed random probes, and its gradients.
fn probe_loss(m: &Kosmos2, inp: &BackboneInput) -> (Tensor, vlm4vla::engine::GradStore) {
    let t = m.forward_trace(inp).unwrap();
    let p1 = Tensor::rand_uniform(-1., 1., t.last_hidden.shape(), DType::F32, Device::Cpu, 1).unwrap();
    let p2 = Tensor::rand_uniform(-1., 1., t.logits.shape(), DType::F32, Device::Cpu, 2).unwrap();
    let loss =
        t.last_hidden.mul(&p1).unwrap().sum_all().unwrap().add(&t.logits.mul(&p2).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    (loss, grads)
}

fn tiny_batch(proc: &Kosmos2Processor, prompts: &[Vec<i64>]) -> BackboneInput {
    let images: Vec<Tensor> = (0..prompts.len())
        .map(|i| {
            let rgb: Vec<u8> = (0..28 * 28 * 3).map(|j| ((j * 37 + i * 101) % 256) as u8).collect();
            proc.preprocess(&rgb, 28, 28).unwrap()
        })
        .collect();
    proc.collate(&images, prompts).unwrap()
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let cfg = Kosmos2Config::tiny();
    let m = Kosmos2::random(cfg.clone(), 7, DType::F32).unwrap();
    let proc = Kosmos2Processor::new(&cfg);
    let inp = tiny_batch(&proc, &[vec![20, 30, 40, 50], vec![60, 70]]);
    let start = std::time::Instant::now();
    let (_, grads) = probe_loss(&m, &inp);
    println!("tiny forward + backward, batch of 2: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    assert!(start.elapsed().as_secs_f64() < 5.0);
    let trainable = m.fused().split(&m.params().trainable()).unwrap();
    assert_eq!(trainable.len(), param_shapes(&cfg).len());
    let by_name = m.fused().split_grads(m.params(), &grads).unwrap();
    let mut norm2 = 0.0;
    let mut maxes = Vec::new();
    for (name, _) in &trainable {
        let g = by_name.get(name).unwrap_or_else(|| panic!("no gradient for {name}")).to_vec::<f64>().unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
        norm2 += g.iter().map(|x| x * x).sum::<f64>();
        maxes.push((name.clone(), g.iter().fold(0f64, |a, x| a.max(x.abs()))));
    }
    let norm = norm2.sqrt();
    for (name, max) in maxes {
        if name.ends_with("k_proj.bias") {
            // Zero in exact arithmetic (softmax is shift-invariant per query): rounding noise only.
            assert!(max <= 1e-5 * norm, "{name}: key-bias gradient {max:e} is not rounding noise");
        } else {
            assert!(max > 0.0, "{name}: zero gradient");
        }
    }
}

#[test]
fn backbone_appended_rows_continue_the_sequence() {
    // Appending the (unscaled) embeddings of tokens must equal appending the tokens themselves,
    // in a left-padded batch; prompt rows never see the appended rows.
    let cfg = Kosmos2Config::tiny();
    let m = Kosmos2::random(cfg.clone(), 3, DType::F32).unwrap();
    let proc = Kosmos2Processor::new(&cfg);
    let prompts = vec![vec![20i64, 30, 40, 50, 51], vec![60, 70]];
    let extra_ids = [90i64, 91, 92];
    let inp = tiny_batch(&proc, &prompts);
    let longer: Vec<Vec<i64>> = prompts.iter().map(|p| [p.as_slice(), &extra_ids].concat()).collect();
    let inp_long = tiny_batch(&proc, &longer);
    let table = m.params().get("text_model.model.embed_tokens.weight").unwrap();
    let e = table.index_select(0, &Tensor::from_vec(extra_ids.to_vec(), &[3], Device::Cpu).unwrap()).unwrap();
    let extra = e.unsqueeze(0).unwrap().broadcast_as(&[2, 3, 64]).unwrap().contiguous().unwrap();

    let out = m.forward(&inp, Some(&extra)).unwrap();
    let l = inp.input_ids.shape()[1];
    assert_eq!(out.appended, l..l + 3);
    assert_eq!(out.hidden.shape(), &[2, l + 3, 64]);
    let long = m.forward(&inp_long, None).unwrap().hidden;
    let (abs, ratio) = compare(&out.hidden, &long, None, 1e-5, 1e-5);
    assert!(ratio <= 1.0, "appended rows vs appended tokens: {abs:e}");
    let plain = m.forward(&inp, None).unwrap().hidden;
    let real: Vec<bool> = inp.attention_mask.to_vec::<i64>().unwrap().iter().map(|&x| x != 0).collect();
    // Equal up to GEMM blocking over a different number of rows.
    let (abs, ratio) = compare(&out.hidden.narrow(1, 0, l).unwrap(), &plain, Some(&real), 1e-5, 1e-5);
    assert!(ratio <= 1.0, "prompt rows changed when rows were appended: {abs:e}");
}

fn err_of<T: std::fmt::Debug>(r: vlm4vla::engine::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let cfg = Kosmos2Config::tiny();
    let victim = "text_model.model.layers.1.ffn.ffn_layernorm.weight";

    let mut ps = ParamStore::new();
    for (n, t) in weights().iter() {
        if n != victim {
            ps.insert(n, t).unwrap();
        }
    }
    let e = err_of(Kosmos2::from_params(cfg.clone(), ps));
    assert!(e.contains(victim) && e.contains("missing") && e.contains("[96]"), "{e}");

    let mut ps = ParamStore::new();
    for (n, t) in weights().iter() {
        let t = if n == victim { Tensor::zeros(&[95], DType::F32, Device::Cpu).unwrap() } else { t.clone() };
        ps.insert(n, &t).unwrap();
    }
    let e = err_of(Kosmos2::from_params(cfg.clone(), ps));
    assert!(e.contains(victim) && e.contains("expected shape [96]") && e.contains("found [95]"), "{e}");

    let mut ps = weights();
    ps.insert("text_model.model.layers.2.ffn.fc1.weight", &Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap())
        .unwrap();
    let e = err_of(Kosmos2::from_params(cfg.clone(), ps));
    assert!(e.contains("text_model.model.layers.2.ffn.fc1.weight") && e.contains("unexpected"), "{e}");

    // A tied checkpoint that also stores lm_head loads (the copy is dropped).
    let mut ps = weights();
    let emb = ps.get("text_model.model.embed_tokens.weight").unwrap();
    ps.insert("text_model.lm_head.weight", &emb).unwrap();
    assert_eq!(
        Kosmos2::from_params(cfg.clone(), ps).unwrap().checkpoint_params().unwrap().len(),
        param_shapes(&cfg).len()
    );
}

#[test]
fn bad_configs_are_named_errors() {
    let e = err_of(Kosmos2Config::from_json(r#"{"model_type": "kosmos-3"}"#));
    assert!(e.contains("model_type") && e.contains("kosmos-3"), "{e}");
    let e = err_of(Kosmos2Config::from_json(r#"{"model_type": "kosmos-2", "text_config": {"model_type": "gpt2"}}"#));
    assert!(e.contains("text_config.model_type") && e.contains("gpt2"), "{e}");
    let e = err_of(Kosmos2Config::from_json(r#"{"vision_config": {"hidden_act": "swoosh"}}"#));
    assert!(e.contains("vision_config.hidden_act") && e.contains("swoosh"), "{e}");
    let e = err_of(Kosmos2Config::from_json(r#"{"text_config": {"embed_dim": 100, "attention_heads": 3}}"#));
    assert!(e.contains("text_config.embed_dim"), "{e}");
    let e = err_of(Kosmos2Config::from_json(r#"{"latent_query_num": "many"}"#));
    assert!(e.contains("latent_query_num"), "{e}");
    let e = err_of(Kosmos2Config::from_json("{"));
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
    let e = err_of(Kosmos2Config::builtin("kosmos-9"));
    assert!(e.contains("kosmos-9"), "{e}");
}

#[test]
fn bad_images_are_errors() {
    let cfg = Kosmos2Config::tiny();
    let proc = Kosmos2Processor::new(&cfg);
    let e = err_of(proc.preprocess(&vec![0u8; 28 * 28 * 4], 28, 28));
    assert!(e.contains("4 channels"), "{e}");
    let e = err_of(proc.preprocess(&[], 0, 28));
    assert!(e.contains("empty image"), "{e}");
    let e = err_of(proc.preprocess(&vec![0u8; 30 * 30 * 3], 30, 30));
    assert!(e.contains("30×30") && e.contains("28×28"), "{e}");

    let m = Kosmos2::random(cfg.clone(), 0, DType::F32).unwrap();
    let mut inp = tiny_batch(&proc, &[vec![20, 30]]);
    inp.pixel_values = Tensor::zeros(&[1, 4, 28, 28], DType::F32, Device::Cpu).unwrap();
    let e = err_of(m.forward(&inp, None));
    assert!(e.contains("pixel_values") && e.contains("[1, 4, 28, 28]"), "{e}");
    let mut inp = tiny_batch(&proc, &[vec![20, 30]]);
    inp.input_ids = Tensor::from_vec(vec![0i64; 2 * 13], &[2, 13], Device::Cpu).unwrap();
    assert!(m.forward(&inp, None).is_err());
    let mut inp = tiny_batch(&proc, &[vec![20, 30]]);
    let mut ids = inp.input_ids.to_vec::<i64>().unwrap();
    ids[12] = 500;
    inp.input_ids = Tensor::from_vec(ids, &[1, 13], Device::Cpu).unwrap();
    let e = err_of(m.forward(&inp, None));
    assert!(e.contains("500") && e.contains("vocabulary"), "{e}");
    let mut inp = tiny_batch(&proc, &[vec![20, 30]]);
    inp.token_type = Tensor::zeros(&[1, 13], DType::U8, Device::Cpu).unwrap();
    let e = err_of(m.forward(&inp, None));
    assert!(e.contains("image_embeds_position_mask"), "{e}");
}

#[test]
fn loads_checkpoint_directories_single_and_sharded() {
    use vlm4vla::engine::io;
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kosmos2-load-{}", std::process::id()));
    let reference = model();
    let ws = weights();
    let all: Vec<(&str, &Tensor)> = ws.iter().collect();

    let single = base.join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(fixture("config.json"), single.join("config.json")).unwrap();
    io::save(single.join("model.safetensors"), &all, None).unwrap();

    let sharded = base.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(fixture("config.json"), sharded.join("config.json")).unwrap();
    let (a, b) = all.split_at(all.len() / 2);
    io::save(sharded.join("model-00001-of-00002.safetensors"), a, None).unwrap();
    io::save(sharded.join("model-00002-of-00002.safetensors"), b, None).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|(n, _)| (n.to_string(), "model-00001-of-00002.safetensors".into()))
        .chain(b.iter().map(|(n, _)| (n.to_string(), "model-00002-of-00002.safetensors".into())))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let case = SafeTensorsFile::open(fixture("case_b1.safetensors")).unwrap();
    let want = reference.forward_trace(&input(&case)).unwrap().logits.to_vec::<f32>().unwrap();
    for dir in [&single, &sharded] {
        let m = Kosmos2::load(dir, Some(DType::F32)).unwrap();
        assert_eq!(m.params().len(), reference.params().len());
        let got = m.forward_trace(&input(&case)).unwrap().logits.to_vec::<f32>().unwrap();
        assert_eq!(got, want, "{}", dir.display());
    }
    let e = err_of(Kosmos2::load(base.join("nowhere"), Some(DType::F32)));
    assert!(e.contains("nowhere"), "{e}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn bf16_forward_tracks_f32() {
    let case = SafeTensorsFile::open(fixture("case_b2.safetensors")).unwrap();
    let inp = input(&case);
    let want = model().forward_trace(&inp).unwrap().last_hidden;
    let mut ps = weights();
    ps.to_dtype(DType::BF16).unwrap();
    let m = Kosmos2::from_params(Kosmos2Config::tiny(), ps).unwrap();
    let got = m.forward_trace(&inp).unwrap().last_hidden;
    assert_eq!(got.dtype(), DType::BF16);
    let real: Vec<bool> = inp.attention_mask.to_vec::<i64>().unwrap().iter().map(|&x| x != 0).collect();
    let (abs, _) = compare(&got, &want, Some(&real), 0.0, 1.0);
    println!("bf16 vs f32 last hidden: max abs err {abs:.3e}");
    assert!(abs < 0.25, "bf16 last hidden differs from f32 by {abs}");
}
