//! RGB images and the preprocessing steps every family shares: loading a PNG, a Pillow-exact
//! resize, `(x/255 − mean)/std` normalisation and Qwen's `smart_resize` rule.
//!
//! - [`RgbImage`]: 8-bit RGB, row-major, `height × width × 3` bytes (what `np.array(pil_image)`
//!   holds for an `"RGB"` image).
//! - [`resize_bicubic`] / [`resize_bilinear`]: bit-exact reproductions of Pillow's
//!   `Image.resize((w, h), Image.BICUBIC | Image.BILINEAR)` (Pillow 13, `libImaging/Resample.c`).
//! - [`rescale_normalize`]: `[3, H, W]` f32 values equal to transformers'
//!   `normalize(rescale(x, 1/255), mean, std)` (`image_transforms.py`, transformers 5.24).
//! - [`smart_resize`]: the target size of `Qwen2VLImageProcessor` (`image_processing_pil_qwen2_vl.py`).
//! - [`shortest_edge_size`] + [`center_crop`]: `CLIPImageProcessor`'s resize-then-crop (Kosmos-2).
//! - [`pixel_values`]: resize + normalise a batch into a `[B, 3, H, W]` f32 tensor
//!   (`SiglipImageProcessor` with [`SIGLIP_MEAN`]/[`SIGLIP_STD`] for PaliGemma).
//!
//! ```
//! use vlm4vla_models::common::image::{resize_bicubic, rescale_normalize, RgbImage};
//! let img = RgbImage::from_raw(vec![255u8; 4 * 2 * 3], 4, 2, 3).unwrap();
//! let small = resize_bicubic(&img, 2, 1).unwrap();
//! assert_eq!((small.width, small.height), (2, 1));
//! let x = rescale_normalize(&small, [0.5; 3], [0.5; 3]);
//! assert_eq!(x, vec![1.0f32; 3 * 2]);
//! ```

use std::path::Path;
use vlm4vla_engine::{Device, Error, Result, Tensor};

/// OpenAI CLIP statistics (`OPENAI_CLIP_MEAN`), used by Qwen2.5-VL and Kosmos-2.
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP statistics (`OPENAI_CLIP_STD`), spelled as transformers spells them.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];
/// SigLIP / PaliGemma statistics (`IMAGENET_STANDARD_MEAN`): maps [0, 255] to [−1, 1].
pub const SIGLIP_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
/// SigLIP / PaliGemma statistics (`IMAGENET_STANDARD_STD`).
pub const SIGLIP_STD: [f32; 3] = [0.5, 0.5, 0.5];

/// An 8-bit RGB image: `data[(y * width + x) * 3 + c]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Decode a PNG file and convert it to RGB the way Pillow's `Image.open(path).convert("RGB")`
    /// does: gray is replicated to three channels, alpha is dropped (not composited), palettes
    /// are expanded, 16-bit RGB keeps the high byte and 16-bit gray (`I;16`) is clipped to 255.
    /// Errors name the file (missing, not a PNG, corrupt, empty).
    pub fn load(path: impl AsRef<Path>) -> Result<RgbImage> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading image {}", path.display()), e))?;
        let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .map_err(|e| Error::file(path, format!("cannot decode as a PNG image: {e}")))?;
        let (w, h) = (decoded.width() as usize, decoded.height() as usize);
        use image::DynamicImage as D;
        let data: Vec<u8> = match decoded {
            D::ImageRgb8(b) => b.into_raw(),
            D::ImageRgba8(b) => b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
            D::ImageLuma8(b) => b.into_raw().iter().flat_map(|&v| [v, v, v]).collect(),
            D::ImageLumaA8(b) => b.into_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
            D::ImageLuma16(b) => b.into_raw().iter().map(|&v| v.min(255) as u8).flat_map(|v| [v, v, v]).collect(),
            D::ImageLumaA16(b) => {
                b.into_raw().chunks_exact(2).map(|p| p[0].min(255) as u8).flat_map(|v| [v, v, v]).collect()
            }
            D::ImageRgb16(b) => b.into_raw().iter().map(|&v| (v >> 8) as u8).collect(),
            D::ImageRgba16(b) => {
                b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).map(|v| (v >> 8) as u8).collect()
            }
            other => other.to_rgb8().into_raw(),
        };
        let img = RgbImage::from_raw(data, w, h, 3).map_err(|e| Error::file(path, e.to_string()))?;
        Ok(img)
    }

    /// An image from interleaved bytes with `channels` per pixel: 3 (RGB, taken as is), 1 (gray,
    /// replicated) or 4 (RGBA, alpha dropped like Pillow's `convert("RGB")`). Errors on zero width
    /// or height, another channel count, or a length other than `width × height × channels`.
    pub fn from_raw(data: Vec<u8>, width: usize, height: usize, channels: usize) -> Result<RgbImage> {
        const OP: &str = "RgbImage::from_raw";
        if width == 0 || height == 0 {
            return Err(Error::Invalid { op: OP, msg: format!("image size {width}x{height} is empty") });
        }
        if !matches!(channels, 1 | 3 | 4) {
            return Err(Error::Invalid {
                op: OP,
                msg: format!("{channels} channels per pixel; expected 3 (RGB), 1 (gray) or 4 (RGBA)"),
            });
        }
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(channels));
        if expected != Some(data.len()) {
            return Err(Error::Invalid {
                op: OP,
                msg: format!("{} bytes do not hold a {width}x{height} image with {channels} channels", data.len()),
            });
        }
        let data = match channels {
            3 => data,
            1 => data.iter().flat_map(|&v| [v, v, v]).collect(),
            _ => data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        };
        Ok(RgbImage { width, height, data })
    }

    /// The pixel at column `x`, row `y`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

// ----- Pillow resampling ----------------------------------------------------------------------
//
// Pillow's `ImagingResample` (libImaging/Resample.c, Pillow 13.0.0) resizes in two separable
// passes, each rounding to uint8: horizontal first (only over the source rows the vertical pass
// will read) then vertical, except when the height shrinks by more than twice as many pixels as
// the width, where the vertical pass runs first. Per output pixel it evaluates the filter at `(x − center + 0.5) / filterscale` over the
// input pixels within `support · filterscale` of the centre, where `filterscale = max(1,
// in/out)` (so downscaling widens the kernel: antialiasing), normalises the weights to sum 1 in
// f64, then turns them into 22-bit fixed point, rounding half away from zero. The weighted sum
// starts at 0.5 in fixed point and is clipped to 0..=255 after the shift.

/// Fractional bits of Pillow's fixed-point coefficients (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

#[derive(Clone, Copy)]
enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                // Keys' cubic convolution with a = −0.5, written as Pillow writes it.
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point weights for one axis: output `i` reads inputs `start[i] .. start[i] + len[i]` with
/// weights `k[i * ksize ..][.. len[i]]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the box `[0, in_size]`.
fn precompute_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // `box` is a float[4] in Pillow, so `in1 − in0` is computed in f32 before widening.
    let scale = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; negative values are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[xx * ksize..xx * ksize + n];
        for (kx, &wx) in row.iter_mut().zip(&w[..n]) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let fixed = v * (1i64 << PRECISION_BITS) as f64;
            *kx = if v < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        start.push(xmin);
        len.push(n);
    }
    Coeffs { ksize, start, len, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// One horizontal pass over source rows `row0 .. row0 + rows` (Pillow's
/// `ImagingResampleHorizontal_8bpc` with `offset = row0`).
fn pass_horizontal(img: &RgbImage, c: &Coeffs, width: usize, row0: usize, rows: usize) -> RgbImage {
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; rows * width * 3];
    for (y, out_row) in (row0..row0 + rows).zip(out.chunks_exact_mut(width * 3)) {
        let in_row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (s, n) = (c.start[xx], c.len[xx]);
            let mut acc = [half; 3];
            for (x, &kx) in c.k[xx * c.ksize..xx * c.ksize + n].iter().enumerate() {
                let p = &in_row[(s + x) * 3..(s + x) * 3 + 3];
                acc[0] += p[0] as i32 * kx;
                acc[1] += p[1] as i32 * kx;
                acc[2] += p[2] as i32 * kx;
            }
            px.copy_from_slice(&acc.map(clip8));
        }
    }
    RgbImage { width, height: rows, data: out }
}

/// One vertical pass; `c.start` is shifted down by `row0` (the first source row `img` holds).
fn pass_vertical(img: &RgbImage, c: &Coeffs, height: usize, row0: usize) -> RgbImage {
    let half = 1i32 << (PRECISION_BITS - 1);
    let stride = img.width * 3;
    let mut out = vec![0u8; height * stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (s, n) = (c.start[yy] - row0, c.len[yy]);
        let k = &c.k[yy * c.ksize..yy * c.ksize + n];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (y, &ky) in k.iter().enumerate() {
                acc += img.data[(s + y) * stride + i] as i32 * ky;
            }
            *o = clip8(acc);
        }
    }
    RgbImage { width: img.width, height, data: out }
}

fn resample(img: &RgbImage, width: usize, height: usize, filter: Filter) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::Invalid { op: "resize", msg: format!("target size {width}x{height} is empty") });
    }
    let expected = img.width.checked_mul(img.height).and_then(|n| n.checked_mul(3));
    if img.width == 0 || img.height == 0 || expected != Some(img.data.len()) {
        return Err(Error::Invalid {
            op: "resize",
            msg: format!(
                "source image {}x{} with {} bytes is not a valid RGB image",
                img.width,
                img.height,
                img.data.len()
            ),
        });
    }
    if (width, height) == (img.width, img.height) {
        // Pillow returns a copy when the size and the box are unchanged.
        return Ok(img.clone());
    }
    let need_horizontal = width != img.width;
    let need_vertical = height != img.height;
    // Pillow 13 (`ImagingResampleInner`): when the height shrinks by more than twice as many
    // pixels as the width does, the vertical pass runs first (over every source column). The
    // order changes the result, because each pass rounds to uint8.
    let (dh, dw) = (img.height as i64 - height as i64, img.width as i64 - width as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let vert = precompute_coeffs(img.height, height, filter);
    if horizontal_first {
        // The horizontal pass covers only the source rows the vertical pass reads.
        let (row0, row1) = if need_horizontal {
            (vert.start[0], vert.start[height - 1] + vert.len[height - 1])
        } else {
            (0, img.height)
        };
        let tmp = if need_horizontal {
            pass_horizontal(img, &precompute_coeffs(img.width, width, filter), width, row0, row1 - row0)
        } else {
            img.clone()
        };
        Ok(if need_vertical { pass_vertical(&tmp, &vert, height, row0) } else { tmp })
    } else {
        let tmp = if need_vertical { pass_vertical(img, &vert, height, 0) } else { img.clone() };
        Ok(if need_horizontal {
            pass_horizontal(&tmp, &precompute_coeffs(img.width, width, filter), width, 0, height)
        } else {
            tmp
        })
    }
}

/// Resize to `width × height` exactly as Pillow's `img.resize((width, height), Image.BICUBIC)`
/// (cubic kernel with a = −0.5, support widened by the downscale factor, Pillow's fixed-point
/// rounding and uint8 clipping after each pass). The same size returns a copy.
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    resample(img, width, height, Filter::Bicubic)
}

/// Resize to `width × height` exactly as Pillow's `img.resize((width, height), Image.BILINEAR)`
/// (triangle kernel, antialiased on downscale like [`resize_bicubic`]).
pub fn resize_bilinear(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    resample(img, width, height, Filter::Bilinear)
}

/// Channel-first `[3, height, width]` values `(x · (1/255) − mean) / std`, bit-identical to
/// transformers' `normalize(rescale(x, 1/255), mean, std)`: the rescale multiplies in f64 and
/// rounds to f32, the subtraction and division are f32.
pub fn rescale_normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = img.width * img.height;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = (px[c] as f64 * (1.0 / 255.0)) as f32;
            out[c * plane + i] = (x - mean[c]) / std[c];
        }
    }
    out
}

/// Qwen2-VL / Qwen2.5-VL's target `(height, width)` for an image of `height × width`: each side
/// rounded to a multiple of `factor` (Python's `round`, half to even), then, if the area exceeds
/// `max_pixels`, both scaled down (floor to multiples of `factor`, at least `factor`), or if it is
/// below `min_pixels`, scaled up (ceil). Errors, like transformers, on an aspect ratio above 200,
/// and on a zero side or factor.
///
/// ```
/// use vlm4vla_models::common::image::smart_resize;
/// assert_eq!(smart_resize(224, 224, 28, 3136, 12845056).unwrap(), (224, 224));
/// assert_eq!(smart_resize(42, 70, 28, 3136, 12845056).unwrap(), (56, 56));
/// ```
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    const OP: &str = "smart_resize";
    if height == 0 || width == 0 || factor == 0 {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("height {height}, width {width} and factor {factor} must be positive"),
        });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("absolute aspect ratio must be smaller than 200, got {ratio} ({height}x{width})"),
        });
    }
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    if h_bar * w_bar > max_pixels {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

/// The `(height, width)` that resizes the shorter side to `shortest` keeping the aspect ratio,
/// as transformers' `get_resize_output_image_size(..., default_to_square=False)`: the longer side
/// is `int(shortest * long / short)` (truncated).
///
/// ```
/// use vlm4vla_models::common::image::shortest_edge_size;
/// assert_eq!(shortest_edge_size(47, 61, 32), (32, 41));
/// ```
pub fn shortest_edge_size(height: usize, width: usize, shortest: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = if short == 0 { 0 } else { ((shortest * long) as f64 / short as f64) as usize };
    if width <= height {
        (new_long, shortest)
    } else {
        (shortest, new_long)
    }
}

/// The centre `width × height` window, as transformers' `center_crop`: the window starts at
/// `floor((H − height) / 2)`, `floor((W − width) / 2)`, and pixels outside the image (a crop
/// larger than the image) are zero.
pub fn center_crop(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::Invalid { op: "center_crop", msg: format!("crop size {width}x{height} is empty") });
    }
    let top = (img.height as i64 - height as i64).div_euclid(2);
    let left = (img.width as i64 - width as i64).div_euclid(2);
    let mut data = vec![0u8; width * height * 3];
    for (y, row) in data.chunks_exact_mut(width * 3).enumerate() {
        let sy = top + y as i64;
        if sy < 0 || sy >= img.height as i64 {
            continue;
        }
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let sx = left + x as i64;
            if sx >= 0 && sx < img.width as i64 {
                px.copy_from_slice(&img.pixel(sx as usize, sy as usize));
            }
        }
    }
    Ok(RgbImage { width, height, data })
}

/// Resize every image to `width × height` with [`resize_bicubic`] and normalise it with
/// [`rescale_normalize`]: a `[B, 3, height, width]` f32 CPU tensor, what a `SiglipImageProcessor`
/// (PIL backend, bicubic) returns as `pixel_values`. Errors on an empty batch.
///
/// ```
/// use vlm4vla_models::common::image::{pixel_values, RgbImage, SIGLIP_MEAN, SIGLIP_STD};
/// let img = RgbImage::from_raw(vec![0u8; 5 * 3 * 3], 5, 3, 3).unwrap();
/// let pv = pixel_values(&[img.clone(), img], 4, 4, SIGLIP_MEAN, SIGLIP_STD).unwrap();
/// assert_eq!(pv.shape(), [2, 3, 4, 4]);
/// ```
pub fn pixel_values(images: &[RgbImage], width: usize, height: usize, mean: [f32; 3], std: [f32; 3]) -> Result<Tensor> {
    if images.is_empty() {
        return Err(Error::Invalid { op: "pixel_values", msg: "no images in the batch".into() });
    }
    let mut out = Vec::with_capacity(images.len() * 3 * width * height);
    for img in images {
        out.extend(rescale_normalize(&resize_bicubic(img, width, height)?, mean, std));
    }
    Tensor::from_vec(out, &[images.len(), 3, height, width], Device::Cpu)
}
