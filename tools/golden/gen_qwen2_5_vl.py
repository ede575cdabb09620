"""Golden fixtures for Qwen2.5-VL (tests/parity_qwen2_5_vl.rs).

Regenerate (CPU, offline, a few seconds) from the repository root:

    HF_HUB_OFFLINE=1 /work/venv/bin/python tools/golden/gen_qwen2_5_vl.py tests/fixtures/qwen2_5_vl

with the versions pinned in tools/golden/requirements.txt (transformers 5.24.0, torch 2.15.0).

Writes:
- config.json               the tiny config as transformers 5.x saves it (text_config / vision_config /
                            rope_parameters layout)
- weights.safetensors       every parameter under its hub (on-disk) name, re-randomised
- case_<name>.safetensors   inputs (pixel_values, image_grid_thw, input_ids, attention_mask,
                            mm_token_type_ids), probes, outputs (image_features, vision.<i> block
                            outputs in window order, layer.<i> LM layer outputs, last_hidden, logits)
                            and `grad.<hub name>` for every parameter, of
                            loss = Σ probe·last_hidden + Σ probe2·logits (probes are zero on padding)
- processor.safetensors     a uint8 HWC image (sides multiples of 28) and the image processor's
                            pixel_values / image_grid_thw for it

The token layout of each case is the chat template with the tiny chat ids listed in CHAT below
(the same ids `ChatTokens::tiny()` uses on the Rust side).
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen_modeling

torch.set_num_threads(1)
RNG = np.random.RandomState(20260125)

# Chat-template ids of the tiny vocabulary (mirrors ChatTokens::tiny() in processor.rs).
CHAT = dict(
    im_start=110,
    im_end=111,
    pad=112,
    newline=10,
    system=[20],
    default_system=[21, 22, 23, 24],
    user=[30],
    assistant=[31],
    vision_start=118,
    vision_end=119,
    image_pad=120,
)


def eager_attention_native(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention with the softmax in the input dtype instead of float32: in a
    float64 run the f32 softmax turns the float64 mask minimum into -inf, and fully masked
    (left-padding) rows become NaN that then leaks through the values into real rows."""
    key_states = qwen_modeling.repeat_kv(key, module.num_key_value_groups)
    value_states = qwen_modeling.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=query.dtype)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def rotary_vision_native(q, k, cos, sin):
    """transformers' vision rope without the float32 round trip of q and k."""
    cos, sin = cos.unsqueeze(-2).to(q.dtype), sin.unsqueeze(-2).to(q.dtype)
    rot = qwen_modeling.rotate_half
    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


def rms_norm_native(self, hidden_states):
    """transformers' Qwen RMSNorm without the float32 round trip."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def tiny_config():
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=128,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 2, 2]},
            bos_token_id=CHAT["pad"],
            eos_token_id=CHAT["im_end"],
            pad_token_id=None,
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=4,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            in_channels=3,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=56,
            out_hidden_size=48,
            fullatt_block_indexes=[1, 3],
            tokens_per_second=2,
        ),
        image_token_id=CHAT["image_pad"],
        video_token_id=121,
        vision_start_token_id=CHAT["vision_start"],
        vision_end_token_id=CHAT["vision_end"],
        tie_word_embeddings=True,
    )


def hub_name(n):
    if n.startswith("model.visual."):
        return "visual." + n[len("model.visual."):]
    if n.startswith("model.language_model."):
        return "model." + n[len("model.language_model."):]
    return n


def randomise(model):
    # matrices N(0, 1/fan_in); 1-D tensors default ± N(0, 0.1²) (norm weights around 1, biases around 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                v = RNG.normal(0.0, 1.0 / np.sqrt(fan_in), size=p.shape)
            else:
                base = 1.0 if "norm" in name or "ln_q" in name else 0.0
                v = base + RNG.normal(0.0, 0.1, size=p.shape)
            p.copy_(torch.from_numpy(v.astype(np.float32)))


def chat_ids(prompt, n_image):
    c = CHAT
    ids = [c["im_start"], *c["system"], c["newline"], *c["default_system"], c["im_end"], c["newline"]]
    ids += [c["im_start"], *c["user"], c["newline"], c["vision_start"]] + [c["image_pad"]] * n_image
    ids += [c["vision_end"], *prompt, c["im_end"], c["newline"], c["im_start"], *c["assistant"], c["newline"]]
    return ids


def image_processor():
    return Qwen2VLImageProcessorPil(do_resize=False)


def process_images(images):
    out = image_processor()(images=images, return_tensors="pt")
    return out["pixel_values"].float(), out["image_grid_thw"].long()


def run_case(model, images, prompts):
    pixel_values, grid = process_images(images)
    seqs = []
    for (t, h, w), prompt in zip(grid.tolist(), prompts):
        seqs.append(chat_ids(prompt, t * h * w // 4))
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), CHAT["pad"], dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, length - len(s):] = torch.tensor(s)
        attention_mask[i, length - len(s):] = 1
    mm_token_type_ids = (input_ids == CHAT["image_pad"]).long()

    captured = {}

    def hook(key):
        def f(_m, _inp, out):
            captured[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return f

    handles = []
    for i, blk in enumerate(model.model.visual.blocks):
        handles.append(blk.register_forward_hook(hook(f"vision.{i}")))
    for i, layer in enumerate(model.model.language_model.layers):
        handles.append(layer.register_forward_hook(hook(f"layer.{i}")))

    model.zero_grad(set_to_none=True)
    pixels64 = pixel_values.double()
    feats = model.model.get_image_features(pixels64, grid).pooler_output
    image_features = torch.cat(feats, 0).detach().clone()
    captured.clear()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixels64,
        image_grid_thw=grid,
        mm_token_type_ids=mm_token_type_ids,
        output_hidden_states=True,
    )
    for h in handles:
        h.remove()
    last_hidden = out.hidden_states[-1]
    logits = out.logits
    valid = attention_mask[..., None].double()
    probe = torch.from_numpy(RNG.normal(size=last_hidden.shape).astype(np.float32)).double() * valid
    probe2 = torch.from_numpy(RNG.normal(size=logits.shape).astype(np.float32)).double() * valid
    loss = (probe * last_hidden).sum() + (probe2 * logits).sum()
    loss.backward()

    t = {
        "pixel_values": pixel_values.contiguous(),
        "image_grid_thw": grid.contiguous(),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_token_type_ids,
        "probe": probe,
        "probe2": probe2,
        "image_features": image_features,
        "last_hidden": last_hidden.detach().clone(),
        "logits": logits.detach().clone(),
        "loss": loss.detach().reshape(1).clone(),
    }
    for k, v in captured.items():
        t[k] = v
    for name, p in model.named_parameters():
        if p.grad is not None:
            t["grad." + hub_name(name)] = p.grad.detach().clone()
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in t.items()}


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/qwen2_5_vl"
    os.makedirs(out_dir, exist_ok=True)
    cfg = tiny_config()
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomise(model)

    cfg_dict = json.loads(model.config.to_json_string(use_diff=False))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)

    weights = {}
    for name, p in model.state_dict().items():
        hub = hub_name(name)
        if hub == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        weights[hub] = p.detach().clone().contiguous()
    save_file(weights, os.path.join(out_dir, "weights.safetensors"))

    # The reference runs in float64 (from the same f32 weights and inputs; the attention softmax,
    # the vision rope and the RMS norms, which transformers computes in f32, are patched to run in
    # float64 too;
    # the rope tables stay f32 as transformers builds them) and is stored as f32. A float32
    # transformers run is itself up to ~8e-6 (relative) off on this config, mostly from the
    # 1176-long patch-embedding dot products, which would leave no margin under 1e-5.
    model.double()
    qwen_modeling.eager_attention_forward = eager_attention_native
    qwen_modeling.apply_rotary_pos_emb_vision = rotary_vision_native
    qwen_modeling.Qwen2_5_VLRMSNorm.forward = rms_norm_native

    def image(h, w):
        return RNG.randint(0, 256, size=(h, w, 3)).astype(np.uint8)

    def prompt(n):
        return [int(x) for x in RNG.randint(40, 100, size=n)]

    cases = {
        "b1": ([image(56, 56)], [prompt(3)]),
        "b2": ([image(56, 56), image(56, 112)], [prompt(2), prompt(6)]),
        "window": ([image(84, 112)], [prompt(4)]),
    }
    for name, (images, prompts) in cases.items():
        t = run_case(model, images, prompts)
        save_file(t, os.path.join(out_dir, f"case_{name}.safetensors"))
        print(name, {k: tuple(v.shape) for k, v in t.items() if not k.startswith("grad.")})

    img = image(56, 84)
    pv, grid = process_images([img])
    save_file(
        {"image": torch.from_numpy(img), "pixel_values": pv.contiguous(), "image_grid_thw": grid},
        os.path.join(out_dir, "processor.safetensors"),
    )


if __name__ == "__main__":
    main()
