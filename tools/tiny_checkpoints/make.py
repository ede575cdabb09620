"""Tiny Hugging Face-format checkpoints of the three backbone families, for the CLI's CI tests.

Regenerate (CPU, under a minute; versions pinned in tools/tiny_checkpoints/requirements.txt):

    HF_HUB_OFFLINE=1 python tools/tiny_checkpoints/make.py tests/fixtures/tiny

For each family (`qwen2_5_vl`, `paligemma`, `kosmos2`) it writes `<out>/<family>/` as a real
checkpoint directory that transformers itself loads with `AutoModelForImageTextToText` /
`AutoProcessor.from_pretrained(dir)`:

- config.json, model.safetensors: a tiny random model saved by `save_pretrained`, in bfloat16 (the
  fine-tuning dtype and the real Qwen2.5-VL storage dtype; half the bytes of f32, and our loader's
  bf16 → f32 conversion gets a committed real-format file to read).
- tokenizer.json + tokenizer_config.json: the family's real tokenizer format (Qwen2 byte-level BPE
  with its special tokens; Gemma BPE with byte fallback, `<image>` and the `<loc…>`/`<seg…>` tokens;
  XLM-R Unigram with Metaspace and Kosmos-2's tag and patch-index tokens), trained tiny with the
  `tokenizers` library on the robot-instruction corpus below.
- preprocessor_config.json / processor_config.json / chat_template.jinja as the family's processor
  saves them (Qwen: min/max pixels sized for 56×56 images).
- reference.safetensors: the processed inputs of one (image, instruction) pair (the first frame
  of `<out>/lerobot` and its task, when that dataset exists, else a fixed synthetic image) and the
  last hidden state (after the final norm) transformers computes for them in f32 from the stored
  bf16 weights (tests/tiny_checkpoints.rs compares ours to it).

Sizes: 56×56 images (Qwen: one 4×4 patch grid, 4 merged tokens; PaliGemma: 16 image tokens;
Kosmos-2: 64 latent queries, the processor's default), hidden sizes 32 (vision) and 64 (text),
2 layers each. The files are byte-stable from run to run.

Every step is checked here: the checkpoint and processor reload with the Auto classes, the Auto
tokenizer encodes like the raw `tokenizers` file (what our Rust wrapper reads), and one forward
on a processed pair runs and is finite.

The tiny LeRobot dataset next to them (`<out>/lerobot`) is written by our own writer:
`vlm4vla collect --episodes 4 --image-size 56 --out tests/fixtures/tiny/lerobot`.
"""

import io
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SEED = 20260214
FAMILIES = ["qwen2_5_vl", "paligemma", "kosmos2"]
IMAGE_SIZE = 56  # every family takes 56×56 images as they are: no resize anywhere
DTYPE = torch.bfloat16

COLOURS = ["red", "green", "blue", "yellow", "purple", "cyan"]
SHAPES = ["block", "ball"]
SIDES = ["left", "right", "top", "bottom"]
TEMPLATES = [
    "touch the {obj}",
    "go to the {obj}",
    "move the gripper to the {obj}",
    "reach for the {obj}",
    "pick up the {obj}",
    "lift the {obj}",
    "grasp the {obj} and lift it",
    "raise the {obj} off the table",
    "put the {obj} on the plate",
    "place the {obj} on the plate",
    "pick up the {obj} and place it on the plate",
    "move the {obj} onto the plate",
    "move the {obj} to the {side} of the table",
    "put the {obj} on the {side} side of the table",
    "carry the {obj} to the {side} edge",
    "place the {obj} at the {side} of the table",
]
EXTRA = [
    "put the cup on the plate",
    "open the drawer",
    "close the gripper",
    "push the button",
    "stack the red block on the blue block",
    "What action should the robot take to pick up the red block?",
    "You are a helpful assistant.",
    "system",
    "user",
    "assistant",
    "An image of",
]


def corpus():
    """Robot instructions: the tabletop environment's task sentences (src/env/tasks.rs) and a few more."""
    lines = []
    for t in TEMPLATES:
        for c in COLOURS:
            for s in SHAPES:
                for side in SIDES if "{side}" in t else [None]:
                    lines.append(t.format(obj=f"{c} {s}", side=side))
    lines += EXTRA
    return lines


# ---------------------------------------------------------------------------------------------
# Tokenizers

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The Qwen2.5-VL tokenizer's added tokens, in their order (ids follow the BPE vocabulary).
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


def qwen_tokenizer(lines):
    """Qwen2 byte-level BPE: NFC, the Qwen split regex then byte-level, no unk; specials after."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED])
    return tok


PALIGEMMA_LOC_SEG = [f"<loc{i:0>4}>" for i in range(1024)] + [f"<seg{i:0>3}>" for i in range(128)]


def gemma_tokenizer(lines):
    """Gemma BPE with byte fallback (`<0x00>`…`<0xFF>`), spaces as "▁", no dummy prefix; ids
    `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4; PaliGemma's `<loc…>`, `<seg…>` and
    `<image>` after the pieces, as in the real vocabulary."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Training splits words at "▁" (so no piece spans two words, as in sentencepiece); the saved
    # pipeline is GemmaTokenizer's, whose merges then never cross a word either.
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + 256 + 220,
        min_frequency=2,
        special_tokens=specials + byte_tokens,
        initial_alphabet=list("\n▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'"),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    # Byte-fallback tokens are ordinary vocabulary entries, not added tokens.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PALIGEMMA_LOC_SEG])
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return tok


KOSMOS_TAGS = [
    "</doc>",
    "<image>",
    "</image>",
    "</chunk>",
    "</line>",
    "<phrase>",
    "</phrase>",
    "<object>",
    "</object>",
    "</delimiter_of_multi_objects/>",
    "<grounding>",
]
KOSMOS_PATCH_INDEX_TOKENS = 64  # an 8×8 grid of boxes (the real one: 1024 = 32×32)


def kosmos_tokenizer(lines):
    """XLM-R Unigram: whitespace split + Metaspace ("▁", prepended), `<s> $A </s>`; ids `<s>` 0,
    `<pad>` 1, `</s>` 2, `<unk>` 3, pieces, `<mask>`, then Kosmos-2's tag and patch-index tokens."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=260, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(lines, trainer)
    # The trainer's log-probabilities differ in the last bits from run to run (summation order) and
    # ties come out in any order: rounded, and ties sorted by piece, the file is the same every time.
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    specials, pieces = vocab[:4], sorted(((p, round(s, 6)) for p, s in vocab[4:]), key=lambda ps: (-ps[1], ps[0]))
    tok.model = models.Unigram([tuple(x) for x in specials] + pieces, unk_id=3, byte_fallback=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<s>", "<pad>", "</s>", "<unk>"]])
    tok.add_special_tokens([AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    # As Kosmos2Processor adds them: plain added tokens that swallow the space before them.
    patch = [f"<patch_index_{i:04d}>" for i in range(KOSMOS_PATCH_INDEX_TOKENS)]
    tok.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=True) for t in KOSMOS_TAGS + patch])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def check_tokenizer(out_dir, lines):
    """The Auto tokenizer (what transformers uses) encodes every corpus line like the raw
    tokenizer.json (what our Rust wrapper reads), and decodes back to the text."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(out_dir)
    raw = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    for line in lines:
        a = auto(line, add_special_tokens=False)["input_ids"]
        r = raw.encode(line, add_special_tokens=False).ids
        assert a == r, (out_dir, line, a, r)
        assert raw.decode(r, skip_special_tokens=False).strip() == line, (line, raw.decode(r))
    return auto


# ---------------------------------------------------------------------------------------------
# Models


def randomise(model, rng):
    """Every parameter re-drawn (FIXTURES.md: default init makes norms identity and biases zero,
    which hides bugs): matrices N(0, 1/fan_in), 1-D tensors their default + N(0, 0.1²)."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=tuple(p.shape))
            else:
                v = p.detach().float().numpy().astype(np.float64) + rng.normal(0.0, 0.1, size=tuple(p.shape))
            p.copy_(torch.from_numpy(v.astype(np.float32)))


def round_up(n, m):
    return (n + m - 1) // m * m


def build(cls, cfg, rng):
    model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomise(model, rng)
    return model.to(DTYPE)


QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def make_qwen(out_dir, lines, rng):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    raw = qwen_tokenizer(lines)
    tid = raw.token_to_id
    vocab = round_up(raw.get_vocab_size(with_added_tokens=True), 64)  # padded, as the real 151936
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=tid("<|endoftext|>"),
            eos_token_id=tid("<|im_end|>"),
            pad_token_id=None,
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_channels=3,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=56,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    model = build(Qwen2_5_VLForConditionalGeneration, cfg, rng)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=raw,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
    )
    side = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(min_pixels=side, max_pixels=4 * side, patch_size=14, merge_size=2, temporal_patch_size=2)
    # The processor insists on a video processor (torchvision backed); it is saved, never used.
    video_processor = Qwen2VLVideoProcessor(min_pixels=side, max_pixels=4 * side, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=QWEN_CHAT_TEMPLATE
    )
    return model, processor


def qwen_text(processor, instruction):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == expected, repr(text)
    return text


def make_paligemma(out_dir, lines, rng):
    from transformers import GemmaTokenizer, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    raw = gemma_tokenizer(lines)
    tid = raw.token_to_id
    vocab = raw.get_vocab_size(with_added_tokens=True)
    patch = 14
    cfg = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=3,
            image_size=IMAGE_SIZE,
            patch_size=patch,
            layer_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh",
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="gemma",
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=vocab,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            max_position_embeddings=1024,
            hidden_act="gelu_pytorch_tanh",
            pad_token_id=tid("<pad>"),
            bos_token_id=tid("<bos>"),
            eos_token_id=tid("<eos>"),
        ),
        image_token_index=tid("<image>"),
        projection_dim=64,
        hidden_size=64,
        pad_token_id=tid("<pad>"),
        bos_token_id=tid("<bos>"),
        eos_token_id=tid("<eos>"),
        tie_word_embeddings=True,
    )
    model = build(PaliGemmaForConditionalGeneration, cfg, rng)
    tokenizer = GemmaTokenizer(tokenizer_object=raw, model_max_length=1024, add_bos_token=True, add_eos_token=False)
    image_processor = SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image_processor.image_seq_length = (IMAGE_SIZE // patch) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


def make_kosmos2(out_dir, lines, rng):
    from transformers import CLIPImageProcessor, Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor
    from transformers import XLMRobertaTokenizer

    raw = kosmos_tokenizer(lines)
    vocab = raw.get_vocab_size(with_added_tokens=True)
    cfg = Kosmos2Config(
        text_config=dict(
            vocab_size=vocab,
            max_position_embeddings=256,
            embed_dim=64,
            layers=2,
            ffn_dim=96,
            attention_heads=4,
            activation_function="gelu",
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            layerdrop=0.0,
            layer_norm_eps=1e-5,
            scale_embedding=True,
            pad_token_id=raw.token_to_id("<pad>"),
            bos_token_id=raw.token_to_id("<s>"),
            eos_token_id=raw.token_to_id("</s>"),
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=3,
            image_size=IMAGE_SIZE,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
            dropout=0.0,
        ),
        latent_query_num=64,  # the processor's default number of image tokens
    )
    model = build(Kosmos2ForConditionalGeneration, cfg, rng)
    tokenizer = XLMRobertaTokenizer(tokenizer_object=raw, model_max_length=1024)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Kosmos2Processor(image_processor=image_processor, tokenizer=tokenizer, num_patch_index_tokens=KOSMOS_PATCH_INDEX_TOKENS)
    return model, processor


# ---------------------------------------------------------------------------------------------
# Driver


def first_frame(lerobot_dir):
    """The first frame's image and task of the tiny LeRobot dataset (or a fixed synthetic image)."""
    from PIL import Image

    data = os.path.join(lerobot_dir, "data", "chunk-000", "file-000.parquet")
    if os.path.exists(data):
        import pyarrow.parquet as pq

        row = pq.read_table(data).slice(0, 1).to_pylist()[0]
        tasks = pq.read_table(os.path.join(lerobot_dir, "meta", "tasks.parquet")).to_pylist()
        task = next(t for t in tasks if t["task_index"] == row["task_index"])
        task = task.get("task") or task.get("__index_level_0__")
        image = Image.open(io.BytesIO(row["observation.image"]["bytes"])).convert("RGB")
        return image, task
    print("(no tiny LeRobot dataset yet: using a synthetic image)")
    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)), "pick up the red block"


def processed(family, processor, image, instruction):
    if family == "qwen2_5_vl":
        text = qwen_text(processor, instruction)
    elif family == "paligemma":
        text = "<image>" + instruction
    else:
        text = instruction
    inputs = processor(images=image, text=text, return_tensors="pt")
    return dict(inputs)


def reference(family, out_dir, inputs):
    """Last hidden state (after the final norm) in f32 from the stored bf16 weights. The model is
    loaded in f32 (not cast after loading a bf16 one: that would leave buffers computed at load
    time, such as Kosmos-2's sinusoidal position table, rounded to bf16)."""
    from transformers import AutoModelForImageTextToText

    f32 = AutoModelForImageTextToText.from_pretrained(out_dir, attn_implementation="eager", dtype=torch.float32)
    f32.eval()
    with torch.no_grad():
        out = f32(**inputs, output_hidden_states=True, return_dict=True)
    hidden, logits = out.hidden_states[-1], out.logits
    embed = f32.get_input_embeddings().weight
    # The last hidden state is after the final norm: the tied output layer reproduces the logits.
    assert torch.allclose(hidden @ embed.T, logits, atol=1e-4, rtol=1e-4), family
    assert torch.isfinite(hidden).all() and torch.isfinite(logits).all()
    return hidden


def make(family, out_root, lines, image, instruction, seed):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out_dir = os.path.join(out_root, family)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    rng = np.random.RandomState(seed)
    maker = {"qwen2_5_vl": make_qwen, "paligemma": make_paligemma, "kosmos2": make_kosmos2}[family]
    model, processor = maker(out_dir, lines, rng)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    # transformers 5 keeps the image processor inside processor_config.json; hub checkpoints (and
    # transformers 4) have it as preprocessor_config.json too.
    processor.image_processor.save_pretrained(out_dir)
    for junk in ["generation_config.json"]:
        path = os.path.join(out_dir, junk)
        if os.path.exists(path):
            os.remove(path)

    # One line of JSON instead of pretty-printed: the same tokenizer in a third of the bytes
    # (PaliGemma's 1152 `<loc…>`/`<seg…>` added tokens dominate).
    tok_path = os.path.join(out_dir, "tokenizer.json")
    compact = Tokenizer.from_file(tok_path).to_str(pretty=False)
    with open(tok_path, "w") as f:
        f.write(compact)

    # Reload everything the way a user would.
    check_tokenizer(out_dir, lines)
    model = AutoModelForImageTextToText.from_pretrained(out_dir, attn_implementation="eager")
    assert next(model.parameters()).dtype == DTYPE
    processor = AutoProcessor.from_pretrained(out_dir)
    inputs = processed(family, processor, image, instruction)
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits.float()).all(), family
    hidden = reference(family, out_dir, inputs)

    tensors = {k: v.contiguous() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    tensors["last_hidden"] = hidden.contiguous()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata={"instruction": instruction})

    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{family}: {n_params} parameters, vocab {model.config.get_text_config().vocab_size}, input {tuple(inputs['input_ids'].shape)}")
    for f, n in sizes.items():
        print(f"  {f:32s} {n:8d} bytes")
    print(f"  total {sum(sizes.values())} bytes")


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny"
    families = sys.argv[2:] or FAMILIES
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lines = corpus()
    image, instruction = first_frame(os.path.join(out_root, "lerobot"))
    print(f"reference pair: {image.size} image, instruction {instruction!r}")
    for family in families:
        make(family, out_root, lines, image, instruction, SEED + FAMILIES.index(family))


if __name__ == "__main__":
    main()
