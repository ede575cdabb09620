//! The engine's live and peak tensor-storage bytes (`engine::counters::memory`) over a VLA
//! training step: the forward keeps activations alive for the backward, the step gives every byte
//! back when its graph and gradients drop, and the peak lies above both. One test in this binary,
//! so no other test's tensors move the process-wide counts.

use vlm4vla::engine::{clip_grad_norm, counters, AdamW, AdamWConfig, DType, Device, Tensor};
use vlm4vla::models::paligemma::{PaliGemma, PaliGemmaConfig, PaliGemmaProcessor};
use vlm4vla::models::vla::{HeadConfig, PolicyConfig, VlaPolicy};

#[test]
fn a_training_step_returns_every_byte_it_allocates() {
    let cfg = PaliGemmaConfig::tiny();
    let p = PaliGemmaProcessor::new(&cfg);
    let prompts: Vec<_> = (0..3).map(|r| p.prompt(&[5 + r, 6, 7], None)).collect();
    let px = Tensor::rand_normal(0.0, 1.0, &[3, 3, 32, 32], DType::F32, Device::Cpu, 1).unwrap();
    let input = p.collate(&prompts, px).unwrap();
    let chunk = 4;
    let policy_cfg = PolicyConfig {
        chunk,
        head: HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16] },
        ..Default::default()
    };
    let policy = VlaPolicy::new(Box::new(PaliGemma::random(cfg, 3, DType::F32).unwrap()), policy_cfg, 4).unwrap();
    let actions = Tensor::full(0.5, &[3, chunk, 7], DType::F32, Device::Cpu).unwrap();
    let mask = Tensor::ones(&[3, chunk], DType::U8, Device::Cpu).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let params = policy.trainable_params();
    let handles: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let mut step = || {
        let before = counters::memory().live_bytes;
        let loss = policy.forward_loss(&input, &actions, &mask).unwrap();
        let saved = counters::memory().live_bytes - before;
        let mut grads = loss.loss.backward().unwrap();
        drop(loss);
        clip_grad_norm(&mut grads, &handles, 1.0).unwrap();
        opt.step(&params, &grads, 1e-3).unwrap();
        drop(grads);
        saved
    };
    step(); // the optimizer's state is created here
    let live = counters::memory().live_bytes;
    counters::reset_peak_bytes();
    let saved = step();
    let m = counters::memory();
    assert_eq!(m.live_bytes, live, "a step leaves storage behind");
    assert!(saved > 0, "the forward keeps nothing for the backward");
    assert!(m.peak_bytes >= live + saved, "peak {} below live {live} + saved {saved}", m.peak_bytes);
    let param_bytes: u64 = handles.iter().map(|t| 4 * t.elem_count() as u64).sum();
    assert!(live >= 3 * param_bytes, "live {live} below parameters and two AdamW moments ({param_bytes} each)");

    // Activation checkpointing per block: the forward keeps each block's output only, so the
    // bytes it leaves for the backward shrink (each block's inside is recomputed there), and the
    // step still gives every byte back. (Here, in the same test: the counts are process-wide.)
    let pali = PaliGemmaConfig::tiny();
    let layers = pali.vision.num_hidden_layers + pali.text.num_hidden_layers;
    let mut policy = policy;
    policy.set_checkpoint_activations(true);
    let live = counters::memory().live_bytes;
    let loss = policy.forward_loss(&input, &actions, &mask).unwrap();
    let kept = counters::memory().live_bytes - live;
    let grads = loss.loss.backward().unwrap();
    drop((loss, grads));
    assert_eq!(counters::memory().live_bytes, live, "a checkpointed step leaves storage behind");
    println!("saved for the backward: {saved} bytes plain, {kept} with checkpointing ({layers} blocks)");
    assert!(kept * 2 < saved, "checkpointing kept {kept} bytes of {saved}");
}
