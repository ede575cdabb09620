//! The Qwen2.5-VL vision tower (mirrors transformers 5.24.0 `modeling_qwen2_5_vl.py`,
//! `Qwen2_5_VisionTransformerPretrainedModel`, and `vision_utils.py`): patch embed as a matmul
//! over patch rows, 2-D rope, window permutation, window/full attention blocks, and the 2×2
//! patch merger whose output is put back in raster order.

use super::config::VisionConfig;
use crate::common::fused;
use std::sync::Arc;
use vlm4vla_engine::nn::{self, linear_named, rms_norm_named};
use vlm4vla_engine::{AttentionMask, DType, Error, ParamStore, Result, RmsNormKind, Tensor};

const OP: &str = "qwen2_5_vl vision";

/// Index tables for one batch of images: the window permutation over merged tokens, the
/// attention segments (windows and whole frames, in patches) and the rope tables in window order.
#[derive(Clone, Debug)]
pub struct VisionPlan {
    /// Merged-token order used inside the tower (windows in raster order, raster inside).
    pub window_index: Vec<usize>,
    /// Its inverse: merged output `i` (raster order) is tower position `reverse[i]`.
    pub reverse_index: Vec<usize>,
    /// Cumulative window lengths in patches (empty windows removed).
    pub cu_window_seqlens: Vec<usize>,
    /// Cumulative frame lengths in patches (full-attention blocks).
    pub cu_seqlens: Vec<usize>,
    /// `(h, w)` patch coordinates per row, in window order.
    pub positions: Vec<(usize, usize)>,
}

impl VisionPlan {
    pub fn new(cfg: &VisionConfig, grids: &[[usize; 3]]) -> Result<Self> {
        let m = cfg.spatial_merge_size;
        let vmw = cfg.merger_window();
        let unit = cfg.merge_unit();
        let mut window_index = Vec::new();
        let mut cu_window = vec![0usize];
        let mut cu_full = vec![0usize];
        let mut raster_positions: Vec<(usize, usize)> = Vec::new();
        let mut base = 0usize;
        for (i, &[t, h, w]) in grids.iter().enumerate() {
            if t == 0 || h == 0 || w == 0 || h % m != 0 || w % m != 0 {
                return Err(Error::Invalid {
                    op: OP,
                    msg: format!("image {i}: grid_thw ({t}, {h}, {w}) must be positive with h and w multiples of {m}"),
                });
            }
            // Rope positions, block-major over m×m merge blocks, repeated per frame.
            for _ in 0..t {
                for bh in 0..h / m {
                    for bw in 0..w / m {
                        for ih in 0..m {
                            for iw in 0..m {
                                raster_positions.push((bh * m + ih, bw * m + iw));
                            }
                        }
                    }
                }
                let last = *cu_full.last().unwrap_or(&0);
                cu_full.push(last + h * w);
            }
            let (lh, lw) = (h / m, w / m);
            // Windows of vmw×vmw merged tokens; transformers pads by `vmw - n % vmw` (a whole
            // empty window when n divides), which only adds empty windows.
            let nwh = (lh + vmw - lh % vmw) / vmw;
            let nww = (lw + vmw - lw % vmw) / vmw;
            for ti in 0..t {
                for wy in 0..nwh {
                    for wx in 0..nww {
                        let mut count = 0;
                        for y in wy * vmw..((wy + 1) * vmw).min(lh) {
                            for x in wx * vmw..((wx + 1) * vmw).min(lw) {
                                window_index.push(base + ti * lh * lw + y * lw + x);
                                count += 1;
                            }
                        }
                        let last = *cu_window.last().unwrap_or(&0);
                        if count > 0 {
                            cu_window.push(last + count * unit);
                        }
                    }
                }
            }
            base += t * lh * lw;
        }
        let mut reverse_index = vec![0usize; window_index.len()];
        for (pos, &src) in window_index.iter().enumerate() {
            reverse_index[src] = pos;
        }
        let positions = window_index
            .iter()
            .flat_map(|&g| (0..unit).map(move |j| g * unit + j))
            .map(|r| raster_positions[r])
            .collect();
        Ok(VisionPlan { window_index, reverse_index, cu_window_seqlens: cu_window, cu_seqlens: cu_full, positions })
    }

    /// The rope tables `[N, head_dim]` in window order, computed in f32 as transformers does:
    /// `inv_freq[k] = 1 / θ^(2k / (head_dim/2))`, angles `cat(h·inv, w·inv)` duplicated.
    pub fn rope_tables(&self, cfg: &VisionConfig) -> Result<(Tensor, Tensor)> {
        let hd = cfg.head_dim();
        let spatial = hd / 2;
        let inv: Vec<f32> =
            (0..spatial / 2).map(|k| 1.0f32 / (cfg.rope_theta as f32).powf((2 * k) as f32 / spatial as f32)).collect();
        let n = self.positions.len();
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for &(ph, pw) in &self.positions {
            let angles: Vec<f32> = inv.iter().map(|f| ph as f32 * f).chain(inv.iter().map(|f| pw as f32 * f)).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let dev = vlm4vla_engine::Device::Cpu;
        Ok((Tensor::from_vec(cos, &[n, hd], dev)?, Tensor::from_vec(sin, &[n, hd], dev)?))
    }
}

/// The tower's outputs: merged image features `[Σ tokens, out_hidden]` in raster order, and the
/// block outputs `[N, hidden]` (window order) when asked for.
pub struct VisionOutput {
    pub features: Tensor,
    pub blocks: Vec<Tensor>,
}

/// Run the vision tower over patch rows `[N, patch_dim]` of the images in `grids`.
pub fn forward(
    cfg: &VisionConfig,
    params: &ParamStore,
    pixel_values: &Tensor,
    grids: &[[usize; 3]],
    recompute: bool,
    keep_blocks: bool,
) -> Result<VisionOutput> {
    let patch_dim = cfg.patch_dim();
    let expected: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
    if pixel_values.rank() != 2 || pixel_values.shape()[1] != patch_dim || pixel_values.shape()[0] != expected {
        return Err(Error::Invalid {
            op: OP,
            msg: format!(
                "pixel_values has shape {:?}, expected [{expected}, {patch_dim}] (Σ t·h·w over image_grid_thw {grids:?})",
                pixel_values.shape()
            ),
        });
    }
    if !pixel_values.dtype().is_float() {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("pixel_values must be float, got {}", pixel_values.dtype()),
        });
    }
    let plan = VisionPlan::new(cfg, grids)?;
    let hidden = cfg.hidden_size;
    let unit = cfg.merge_unit();
    let n = expected;
    let w_patch = params.get("visual.patch_embed.proj.weight")?;
    let dtype = w_patch.dtype();
    let x = pixel_values.to_dtype(dtype)?.linear(&w_patch.reshape(&[hidden, patch_dim])?, None)?;
    let window_index = index_tensor(&plan.window_index)?.to_device(x.device())?;
    let mut x = x.reshape(&[n / unit, unit, hidden])?.index_select(0, &window_index)?.reshape(&[n, hidden])?;
    let (cos, sin) = plan.rope_tables(cfg)?;
    let (cos, sin) =
        (cos.to_dtype(DType::F32)?.to_device(x.device())?, sin.to_dtype(DType::F32)?.to_device(x.device())?);
    let windows = AttentionMask::Segments(plan.cu_window_seqlens.clone());
    let full = AttentionMask::Segments(plan.cu_seqlens.clone());
    let mut blocks = Vec::new();
    let ctx = Arc::new(BlockContext { cfg: cfg.clone(), params: params.clone(), cos, sin, windows, full, n });
    for i in 0..cfg.depth {
        let c = ctx.clone();
        x = nn::block(recompute, x, move |x| c.block(i, x))?;
        if keep_blocks {
            blocks.push(x.clone());
        }
    }
    let h = rms_norm_named(params, "visual.merger.ln_q", &x, 1e-6, RmsNormKind::Plain)?
        .reshape(&[n / unit, unit * hidden])?;
    let h = linear_named(params, "visual.merger.mlp.0", &h)?.gelu()?;
    let h = linear_named(params, "visual.merger.mlp.2", &h)?;
    let features = h.index_select(0, &index_tensor(&plan.reverse_index)?.to_device(h.device())?)?;
    Ok(VisionOutput { features, blocks })
}

pub(crate) fn index_tensor(idx: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), &[idx.len()], vlm4vla_engine::Device::Cpu)
}

/// What every vision block of one forward reads besides its input.
struct BlockContext {
    cfg: VisionConfig,
    params: ParamStore,
    cos: Tensor,
    sin: Tensor,
    windows: AttentionMask,
    full: AttentionMask,
    n: usize,
}

impl BlockContext {
    fn block(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let (cfg, params, n) = (&self.cfg, &self.params, self.n);
        let (heads, hd, hidden) = (cfg.num_heads, cfg.head_dim(), cfg.hidden_size);
        let scale = (hd as f64).powf(-0.5);
        let p = |s: &str| format!("visual.blocks.{i}.{s}");
        let mask = if cfg.fullatt_block_indexes.contains(&i) { &self.full } else { &self.windows };
        let h = rms_norm_named(params, &p("norm1"), x, 1e-6, RmsNormKind::Plain)?;
        let qkv = linear_named(params, &p("attn.qkv"), &h)?.reshape(&[1, n, 3 * hidden])?;
        let [q, k, v] = fused::split_heads(&qkv, [heads; 3], hd)?;
        let (q, k) = (q.rope(&self.cos, &self.sin)?, k.rope(&self.cos, &self.sin)?);
        let a = q.attention(&k, &v, mask, None, scale)?.out.reshape(&[n, hidden])?;
        let o = linear_named(params, &p("attn.proj"), &a)?;
        let (x, h) = o.rms_norm_residual(x, Some(&params.get(&p("norm2.weight"))?), 1e-6, RmsNormKind::Plain)?;
        let g = linear_named(params, &p("mlp.gate_up_proj"), &h)?.swiglu()?;
        x.add(&linear_named(params, &p("mlp.down_proj"), &g)?)
    }
}
