"""Fixtures for models/src/common: Pillow resizes, a transformers image processor, PNG mode
conversion, Qwen's smart_resize and a tiny tokenizer.

Regenerate (from the repository root, offline, CPU only):

    HF_HUB_OFFLINE=1 /work/venv/bin/python tools/golden/gen_common.py

Writes tests/fixtures/common/ (pinned versions in tools/golden/requirements.txt; the tokenizer
needs the `tokenizers` package that transformers installs). Every random value comes from
numpy's RandomState, so the files are the same on every machine.
"""

import json
import math
import os

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "common")


def noise_image(rng, w, h):
    """Uniform noise plus a smooth ramp, so both sharp edges and gradients are exercised."""
    noise = rng.randint(0, 256, size=(h, w, 3)).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 127 + 0 * xx], axis=-1)
    return np.clip(np.round(0.5 * noise + 0.5 * ramp), 0, 255).astype(np.uint8)


def resize_cases(rng, tensors, manifest):
    # (name, source w, h, target w, h): upscale, downscale by non-integer factors, mixed
    # (one axis up, the other down), identity, a 1-pixel-wide source, and both pass orders.
    cases = [
        ("up_37x23_to_56x56", 37, 23, 56, 56),
        ("down_300x200_to_224x224", 300, 200, 224, 224),
        ("down_97x61_to_40x29", 97, 61, 40, 29),
        ("mixed_120x30_to_50x70", 120, 30, 50, 70),
        ("identity_64x64", 64, 64, 64, 64),
        ("thin_1x9_to_5x4", 1, 9, 5, 4),
        # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
        # many pixels as the width: width up / height down, both down, and the boundary either side.
        ("vfirst_40x150_to_56x30", 40, 150, 56, 30),
        ("vfirst_90x160_to_60x50", 90, 160, 60, 50),
        ("hfirst_edge_60x60_to_50x40", 60, 60, 50, 40),
        ("vfirst_edge_60x60_to_50x39", 60, 60, 50, 39),
    ]
    for name, w, h, tw, th in cases:
        arr = noise_image(rng, w, h)
        img = Image.fromarray(arr, "RGB")
        img.save(os.path.join(OUT, f"{name}.png"))
        bic = np.array(img.resize((tw, th), Image.BICUBIC))
        bil = np.array(img.resize((tw, th), Image.BILINEAR))
        assert bic.shape == (th, tw, 3)
        if (w, h) == (tw, th):
            assert (bic == arr).all()
        tensors[f"{name}.bicubic"] = bic
        tensors[f"{name}.bilinear"] = bil
        manifest["resize"].append({"name": name, "png": f"{name}.png", "size": [w, h], "target": [tw, th]})


def mode_cases(rng, tensors, manifest):
    """PNGs in other modes and Pillow's convert("RGB") of them."""
    h, w = 5, 7
    rgb = noise_image(rng, w, h)
    alpha = rng.randint(0, 256, size=(h, w, 1)).astype(np.uint8)
    gray = rng.randint(0, 256, size=(h, w)).astype(np.uint8)
    gray16 = rng.randint(0, 1024, size=(h, w)).astype(np.uint16)  # values above 255 clip in Pillow
    palette = Image.fromarray(rgb, "RGB").quantize(colors=6)
    images = {
        "mode_rgba": Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA"),
        "mode_l": Image.fromarray(gray, "L"),
        "mode_la": Image.fromarray(np.stack([gray, alpha[..., 0]], axis=-1), "LA"),
        "mode_i16": Image.fromarray(gray16),
        "mode_p": palette,
    }
    for name, img in images.items():
        path = os.path.join(OUT, f"{name}.png")
        img.save(path)
        back = Image.open(path)
        tensors[f"{name}.rgb"] = np.array(back.convert("RGB"))
        manifest["modes"].append({"name": name, "png": f"{name}.png", "pillow_mode": back.mode})


def processor_case(rng, tensors, manifest):
    """SiglipImageProcessor (PIL backend) with explicit arguments on an image that needs resizing."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    arr = noise_image(rng, 61, 47)
    img = Image.fromarray(arr, "RGB")
    img.save(os.path.join(OUT, "siglip_61x47.png"))
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    size = {"height": 48, "width": 40}
    proc = SiglipImageProcessorPil(
        do_resize=True,
        size=size,
        resample=Image.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )
    pv = proc(images=img, return_tensors="np")["pixel_values"][0]
    assert pv.shape == (3, 48, 40) and pv.dtype == np.float32, (pv.shape, pv.dtype)
    tensors["siglip.pixel_values"] = pv
    tensors["siglip.resized"] = np.array(img.resize((40, 48), Image.BICUBIC))
    # A second normalisation with CLIP statistics (the values Qwen2.5-VL and Kosmos-2 use), through
    # transformers' own numpy rescale + normalize, on the same resized image.
    from transformers.image_transforms import normalize, rescale

    clip_mean = [0.48145466, 0.4578275, 0.40821073]
    clip_std = [0.26862954, 0.26130258, 0.27577711]
    chw = np.moveaxis(tensors["siglip.resized"], -1, 0)
    clip = normalize(rescale(chw, 1 / 255, input_data_format="channels_first"), clip_mean, clip_std,
                     input_data_format="channels_first")
    assert clip.dtype == np.float32
    tensors["clip.pixel_values"] = clip
    # CLIPImageProcessor (Kosmos-2's): shortest edge to 32 (so 61x47 -> 41x32), bicubic, centre
    # crop 32x32, CLIP statistics.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    clip_proc = CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 32},
        resample=Image.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=clip_mean,
        image_std=clip_std,
        do_convert_rgb=True,
    )
    tensors["clip_processor.pixel_values"] = clip_proc(images=img, return_tensors="np")["pixel_values"][0]
    # transformers' numpy centre crop, smaller and larger (zero padding) than the image, odd sizes.
    from transformers.image_transforms import center_crop

    for cw, ch in [(20, 15), (70, 50), (61, 46), (64, 47)]:
        tensors[f"center_crop.{cw}x{ch}"] = center_crop(arr, (ch, cw), input_data_format="channels_last")
    manifest["processor"] = {
        "png": "siglip_61x47.png",
        "size": [size["width"], size["height"]],
        "siglip_mean": mean,
        "siglip_std": std,
        "clip_mean": clip_mean,
        "clip_std": clip_std,
        "clip_shortest_edge": 32,
        "clip_crop": [32, 32],
        "center_crops": [[20, 15], [70, 50], [61, 46], [64, 47]],
    }


def smart_resize_cases(manifest):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    cases = [
        (224, 224, 28, 3136, 12845056),
        (42, 70, 28, 3136, 12845056),  # round(1.5) = 2, round(2.5) = 2: Python rounds half to even
        (98, 126, 28, 3136, 12845056),  # 3.5 -> 4, 4.5 -> 4
        (480, 640, 28, 3136, 12845056),
        (10, 20, 28, 3136, 12845056),  # below min_pixels: scaled up with ceil
        (4000, 3000, 28, 3136, 1003520),  # above max_pixels: scaled down with floor
        (84, 112, 28, 3136, 12845056),
        (1, 150, 28, 56 * 56, 28 * 28 * 1280),
        (333, 777, 14, 1000, 50000),
    ]
    out = []
    for h, w, f, lo, hi in cases:
        rh, rw = smart_resize(h, w, factor=f, min_pixels=lo, max_pixels=hi)
        out.append({"height": h, "width": w, "factor": f, "min_pixels": lo, "max_pixels": hi,
                    "expected": [int(rh), int(rw)]})
    manifest["smart_resize"] = out


def tokenizer_case(manifest):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors

    corpus = [
        "pick up the red block and place it on the blue plate",
        "push the green cube to the left",
        "open the drawer, then close the drawer",
        "lift the yellow block; put it down gently",
        "rotate the red block to the right",
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<unk>", "<bos>", "<eos>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    path = os.path.join(OUT, "tokenizer.json")
    tok.save(path)
    tok = Tokenizer.from_file(path)
    texts = [
        "pick up the red block",
        "close the drawer gently",
        "<image>push the cube",
        "zebra! unseen words 123",
        "",
    ]
    cases = []
    for t in texts:
        with_special = tok.encode(t, add_special_tokens=True).ids
        plain = tok.encode(t, add_special_tokens=False).ids
        cases.append({
            "text": t,
            "ids": plain,
            "ids_with_special": with_special,
            "decoded": tok.decode(plain, skip_special_tokens=False),
            "decoded_with_special_skipped": tok.decode(with_special, skip_special_tokens=True),
        })
    manifest["tokenizer"] = {
        "file": "tokenizer.json",
        "cases": cases,
        "token_to_id": {k: tok.token_to_id(k) for k in ["<pad>", "<bos>", "<eos>", "<image>", "the", "\u0120the", "missing-token"]},
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    # One RandomState per section, so adding a case to one section leaves the others' files alone.
    tensors = {}
    manifest = {"resize": [], "modes": []}
    resize_cases(np.random.RandomState(20261125), tensors, manifest)
    mode_cases(np.random.RandomState(20261126), tensors, manifest)
    processor_case(np.random.RandomState(20261127), tensors, manifest)
    smart_resize_cases(manifest)
    tokenizer_case(manifest)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(OUT, "images.safetensors"))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
