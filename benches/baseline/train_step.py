"""One VLA training step in PyTorch + transformers: the baseline of benches/step.rs.

The model is the case's backbone (benches/baseline/step_cases.json), built with transformers'
own classes from the case's config dict with random weights (PaliGemmaForConditionalGeneration,
Qwen2_5_VLForConditionalGeneration, Kosmos2ForConditionalGeneration; attention through SDPA),
with the VLA head of models/src/vla (head.rs, policy.rs) on top:

- the extra rows appended after the prompt: the projected proprioceptive state (when the policy
  takes one) and the learnable action queries `[latent, hidden]` (zeros at start);
- the language model runs over image tokens + prompt + extra rows, with each family's embedding
  merge as our backbones do it: PaliGemma's image features unscaled and the extra rows too (they
  are treated as suffix tokens of the prefix-LM mask, positions continuing), Qwen2.5-VL's M-RoPE
  positions from `get_rope_index` continued by the extra rows on all three axes, Kosmos-2's rows
  scaled like token embeddings with the sinusoidal positions that follow;
- the last `latent` hidden states → the FCDecoder (trunk Linear-ReLU-Linear, then an arm branch
  ending in tanh → [B, chunk, 6] and a gripper branch → [B, chunk] logits), Xavier-uniform weights;
- the loss: Huber(arm, targets[..., :6]) averaged over valid chunk steps and the 6 dims, plus
  ratio · BCE-with-logits(gripper, targets[..., 6]) averaged over valid steps.

The step is the trainer's: forward and loss, the loss read on the host, backward, gradient
clipping to the case's norm (its value read on the host, as the trainer checks it), AdamW with the
case's hyper-parameters, gradients dropped. The batch is the one our bench trained on (a
safetensors file it writes), so both sides see the same inputs; the parameter count must equal
ours (`--params`).

Modes: `eager` (attn_implementation="sdpa") and `compile` (the forward and loss through
torch.compile; the backward is compiled with it; clipping and AdamW stay eager; Qwen's position ids
are computed on the host before the compiled call). Prints one JSON line: the median step time in
ms over the timed steps, FLOPs per step from torch.utils.flop_counter.FlopCounterMode (eager), the
bytes autograd saves for the backward (saved-tensor hooks, storages of parameters and inputs
excluded), and peak memory (VmHWM on the CPU, max_memory_allocated on a GPU).

    python3 benches/baseline/train_step.py --case paligemma-tiny --batch batch.safetensors --mode eager
"""

import argparse
import json
import math
import os
import sys
import time

# This folder's kernels.py would shadow the `kernels` package transformers imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import torch
import torch.nn.functional as F
from torch import nn

ARM_DIMS = 6


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def build_backbone(case, dtype, device):
    import transformers

    cfg = dict(case["config"])
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    cls = {
        "paligemma": transformers.PaliGemmaForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "kosmos2": transformers.Kosmos2ForConditionalGeneration,
    }[case["backbone"]]
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.train()


def hidden_size(case, model):
    text = model.config.text_config
    return text.embed_dim if case["backbone"] == "kosmos2" else text.hidden_size


class Head(nn.Module):
    """The action queries, the state projection and the FCDecoder (models/src/vla/head.rs)."""

    def __init__(self, hidden, policy):
        super().__init__()
        self.latent = policy.get("latent", 1)
        self.combine = policy.get("latent_combine", "flatten")
        self.chunk = policy["chunk"]
        self.state_dim = policy.get("state_dim", 0)
        self.action_query = nn.Parameter(torch.zeros(self.latent, hidden))
        if self.state_dim > 0:
            self.state_proj = nn.Linear(self.state_dim, hidden)
            bound = 1.0 / math.sqrt(self.state_dim)
            nn.init.uniform_(self.state_proj.weight, -bound, bound)
            nn.init.zeros_(self.state_proj.bias)
        head = policy["head"]
        in_features = self.latent * hidden if self.combine == "flatten" else hidden
        mid = head["trunk_hidden"] or max(in_features // 2, 1)
        self.trunk = nn.ModuleList([self.linear(in_features, mid), self.linear(mid, head["trunk_out"])])
        widths = [head["trunk_out"], *head["branch_hidden"]]
        self.arm = self.branch(widths, ARM_DIMS * self.chunk)
        self.gripper = self.branch(widths, self.chunk)

    @staticmethod
    def linear(fan_in, fan_out):
        lin = nn.Linear(fan_in, fan_out)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        return lin

    def branch(self, widths, out):
        dims = [*widths, out]
        return nn.ModuleList([self.linear(a, b) for a, b in zip(dims, dims[1:])])

    def extra_rows(self, batch, state):
        rows = self.action_query.unsqueeze(0).expand(batch, -1, -1)
        if self.state_dim > 0:
            s = self.state_proj(state.to(self.action_query.dtype)).unsqueeze(1)
            rows = torch.cat([s, rows], 1)
        return rows

    def forward(self, rows):
        b = rows.shape[0]
        x = rows.reshape(b, -1) if self.combine == "flatten" else rows.mean(1)
        trunk = self.trunk[1](F.relu(self.trunk[0](x)))

        def mlp(layers):
            h = trunk
            for i, layer in enumerate(layers):
                h = layer(h)
                if i + 1 < len(layers):
                    h = F.relu(h)
            return h

        arm = torch.tanh(mlp(self.arm)).reshape(b, self.chunk, ARM_DIMS)
        return arm, mlp(self.gripper)


def paligemma_hidden(model, batch, extra, _positions):
    pm = model.model
    ids = batch["input_ids"]
    image = pm.get_image_features(batch["pixel_values"].to(extra.dtype)).pooler_output
    emb = pm.get_input_embeddings()(ids)
    emb = emb.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), image.to(emb.dtype))
    ones = torch.ones(ids.shape[0], extra.shape[1], dtype=torch.long, device=ids.device)
    out = pm(
        inputs_embeds=torch.cat([emb, extra], 1),
        attention_mask=torch.cat([batch["attention_mask"].long(), ones], 1),
        token_type_ids=torch.cat([batch["token_type"].long(), ones], 1),
    )
    return out.last_hidden_state


def qwen_positions(model, batch, appended):
    """M-RoPE positions [3, B, L + Q]: transformers' for the prompt, then each row's next ones."""
    ids = batch["input_ids"]
    pos, _ = model.model.get_rope_index(
        ids,
        mm_token_type_ids=batch["token_type"].long(),
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"].long(),
    )
    start = pos.amax(dim=(0, 2)) + 1
    more = start.view(1, -1, 1) + torch.arange(appended, device=pos.device).view(1, 1, -1)
    return torch.cat([pos, more.expand(3, -1, -1)], 2)


def qwen_hidden(model, batch, extra, positions):
    qm = model.model
    ids = batch["input_ids"]
    feats = qm.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    emb = qm.get_input_embeddings()(ids)
    emb = emb.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), torch.cat(feats, 0).to(emb.dtype))
    ones = torch.ones(ids.shape[0], extra.shape[1], dtype=torch.long, device=ids.device)
    out = qm.language_model(
        inputs_embeds=torch.cat([emb, extra], 1),
        position_ids=positions,
        attention_mask=torch.cat([batch["attention_mask"].long(), ones], 1),
    )
    return out.last_hidden_state


def kosmos_hidden(model, batch, extra, _positions):
    image = model.get_image_features(batch["pixel_values"].to(extra.dtype)).pooler_output
    text = model.text_model.model
    ids = batch["input_ids"]
    emb = text.embed_tokens(ids)
    emb = emb.masked_scatter(batch["token_type"].bool().unsqueeze(-1), image.to(emb.dtype))
    ones = torch.ones(ids.shape[0], extra.shape[1], dtype=torch.long, device=ids.device)
    out = text(
        inputs_embeds=torch.cat([emb, extra], 1),
        attention_mask=torch.cat([batch["attention_mask"].long(), ones], 1),
    )
    return out.last_hidden_state


HIDDEN = {"paligemma": paligemma_hidden, "qwen2_5_vl": qwen_hidden, "kosmos2": kosmos_hidden}


class Policy(nn.Module):
    def __init__(self, case, dtype, device):
        super().__init__()
        self.case = case
        self.backbone = build_backbone(case, dtype, device)
        with torch.device(device):
            self.head = Head(hidden_size(case, self.backbone), case["policy"]).to(dtype)
        p = case["policy"]
        self.ratio = p.get("gripper_loss_ratio", 0.01)
        self.delta = p.get("huber_delta", 1.0)
        self.hidden = HIDDEN[case["backbone"]]

    def appended(self):
        return self.head.latent + (1 if self.head.state_dim > 0 else 0)

    def positions(self, batch):
        if self.case["backbone"] != "qwen2_5_vl":
            return None
        return qwen_positions(self.backbone, batch, self.appended())

    def forward(self, batch, positions):
        b = batch["input_ids"].shape[0]
        extra = self.head.extra_rows(b, batch.get("state"))
        hidden = self.hidden(self.backbone, batch, extra, positions)
        arm, logits = self.head(hidden[:, -self.head.latent :])
        keep = batch["mask"] != 0
        keep_f = keep.to(arm.dtype)
        n = keep_f.sum().clamp(min=1.0)
        actions = batch["actions"].to(arm.dtype)
        arm_t = torch.where(keep.unsqueeze(2), actions[..., :ARM_DIMS], torch.zeros((), dtype=arm.dtype))
        arm_loss = (F.huber_loss(arm, arm_t, reduction="none", delta=self.delta) * keep_f.unsqueeze(2)).sum()
        grip_t = torch.where(keep, actions[..., ARM_DIMS], torch.zeros((), dtype=arm.dtype))
        grip_loss = (F.binary_cross_entropy_with_logits(logits, grip_t, reduction="none") * keep_f).sum()
        return arm_loss / (n * ARM_DIMS) + self.ratio * grip_loss / n


def load_batch(path, device):
    from safetensors.torch import load_file

    return {k: v.to(device) for k, v in load_file(path).items()}


def saved_activation_bytes(policy, batch, positions):
    """Bytes of the tensors autograd saves in one forward + loss (unique storages), leaving out
    the storages of parameters and inputs, which exist before the step."""
    existing = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    existing |= {t.untyped_storage().data_ptr() for t in batch.values()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in existing and s.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = policy(batch, positions)
    loss.backward()
    policy.zero_grad(set_to_none=True)
    return sum(seen.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="benches/baseline/step_cases.json")
    ap.add_argument("--case", required=True)
    ap.add_argument("--batch", required=True, help="safetensors batch written by benches/step.rs")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--params", type=int, help="our parameter count; must match")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=200)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with open(args.cases) as f:
        case = next(c for c in json.load(f)["cases"] if c["case"] == args.case)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    policy = Policy(case, dtype, device)
    params = [p for p in policy.parameters() if p.requires_grad]
    count = sum(p.numel() for p in policy.parameters())
    if args.params is not None and count != args.params:
        print(f"parameter count {count} differs from ours {args.params}", file=sys.stderr)
        sys.exit(2)
    batch = load_batch(args.batch, device)
    o = case["optim"]
    opt_kwargs = dict(lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    try:
        optimizer = torch.optim.AdamW(params, fused=True, **opt_kwargs)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.AdamW(params, **opt_kwargs)
    loss_fn = torch.compile(policy) if args.mode == "compile" else policy

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step():
        positions = policy.positions(batch)
        loss = loss_fn(batch, positions)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"the loss is {value}")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, o["clip_grad_norm"])
        if not math.isfinite(norm.item()):
            raise RuntimeError(f"the gradient norm is {norm.item()}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    # torch.compile may recompile on the first calls (guards on requires_grad, the optimizer's
    # state): one more warm-up step there.
    for _ in range(args.warmup + (1 if args.mode == "compile" else 0)):
        loss = step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    started = time.perf_counter()
    while len(times) < args.max_steps and (
        len(times) < args.min_steps or time.perf_counter() - started < args.min_seconds
    ):
        t = time.perf_counter()
        loss = step()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    times_sorted = sorted(times)
    n = len(times_sorted)
    ms = times_sorted[n // 2] if n % 2 else 0.5 * (times_sorted[n // 2 - 1] + times_sorted[n // 2])
    if cuda:
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "torch max_memory_allocated"
    else:
        peak, peak_kind = peak_rss_bytes(), "peak RSS (VmHWM)"
    # Counted after the timed steps: the flop counter leaves hooks behind that slow later steps.
    flops = saved = None
    if args.mode == "eager":
        from torch.utils.flop_counter import FlopCounterMode

        positions = policy.positions(batch)
        saved = saved_activation_bytes(policy, batch, positions)
        counter = FlopCounterMode(display=False)
        with counter:
            policy(batch, positions).backward()
        policy.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
    import transformers

    print(
        json.dumps(
            {
                "case": args.case,
                "mode": args.mode,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "params": count,
                "ms": ms,
                "steps": n,
                "step_ms": times,
                "loss": loss,
                "flops": flops,
                "saved_activation_bytes": saved,
                "peak_mem_bytes": peak,
                "peak_mem_kind": peak_kind,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
