//! Robot demonstration data: the LeRobot v3.0 dataset layout as the on-disk format, and a loader
//! that decodes and batches frames ahead of training.
//!
//! - [`LeRobotWriter`] records episodes (RGB frame, state, action) and writes a dataset that
//!   LeRobot's own tools read: `meta/info.json`, `meta/stats.json`, `meta/tasks.parquet`,
//!   `meta/episodes/chunk-000/file-000.parquet` and `data/chunk-000/file-000.parquet` with PNG
//!   frames embedded in an image column.
//! - [`LeRobotDataset`] opens such a dataset, validates it against `info.json`, and hands out
//!   [`Sample`]s: one frame, its instruction and the action chunk that starts there. Its cameras
//!   are image features (PNG or JPEG frames in the data files) or, with the cargo feature `video`,
//!   video features (mp4 files under `videos/`, decoded on demand through FFmpeg; see `video.rs`).
//! - [`Loader`] turns a dataset into seeded, resumable batches built by worker threads.
//!
//! ```
//! use vlm4vla::data::{LeRobotDataset, LeRobotWriter};
//! let dir = std::env::temp_dir().join(format!("vlm4vla-doc-data-{}", std::process::id()));
//! let mut w = LeRobotWriter::create(&dir, 10, [4, 6, 3], 2, 7, "toy").unwrap();
//! for t in 0..3 {
//!     w.add_frame(&vec![t as u8; 4 * 6 * 3], &[0.0, 1.0], &[0.1; 7]).unwrap();
//! }
//! w.end_episode("push the red block").unwrap();
//! w.finish().unwrap();
//! let ds = LeRobotDataset::open(&dir).unwrap();
//! let s = ds.sample(1, 4).unwrap();
//! assert_eq!(s.instruction, "push the red block");
//! assert_eq!(s.action_mask, vec![true, true, false, false]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

mod frames;
mod lerobot;
pub mod loader;
mod parquet_io;
mod stats;
mod video;
mod writer;

pub use lerobot::{DatasetKeys, Episode, LeRobotDataset, CODEBASE_VERSION, IMAGE_KEY};
pub use loader::{Batch, CameraImages, Loader, LoaderConfig, LoaderIter, LoaderPosition, RandomShift};
pub use stats::{DatasetStats, FeatureStats, QUANTILES};
pub use video::TOLERANCE_S as VIDEO_TOLERANCE_S;
pub use writer::LeRobotWriter;

use crate::engine::{Error, Result};

pub use crate::models::common::image::RgbImage;

/// One training example: the frame at some index, with the action chunk that starts there.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Global frame index (the `index` column).
    pub index: usize,
    pub image: RgbImage,
    pub state: Vec<f32>,
    /// The task string of the frame's `task_index`.
    pub instruction: String,
    /// `chunk × action_dim`, row-major: the actions of frames `index .. index + chunk`.
    /// Past the end of the episode the rows repeat the episode's last action (LeRobot's
    /// `delta_timestamps` padding does the same) and `action_mask` is `false` there.
    pub actions: Vec<f32>,
    /// `chunk` flags: `true` where the action row is a real action of this episode.
    pub action_mask: Vec<bool>,
}

/// Encode an RGB image as PNG.
pub fn encode_png(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    if rgb.len() != width * height * 3 {
        return Err(Error::Invalid {
            op: "encode_png",
            msg: format!("{} bytes for a {width}x{height} RGB image (expected {})", rgb.len(), width * height * 3),
        });
    }
    let mut out = Vec::with_capacity(rgb.len() / 2 + 64);
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    );
    enc.write_image(rgb, width as u32, height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Invalid { op: "encode_png", msg: e.to_string() })?;
    Ok(out)
}

/// Decode a PNG (any colour type) to 8-bit RGB.
pub fn decode_png(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(RgbImage { width: w as usize, height: h as usize, data: rgb.into_raw() })
}

/// Decode a stored frame, PNG or JPEG (told apart by their signatures), to 8-bit RGB.
pub fn decode_frame(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).map_err(|e| e.to_string())?;
        let rgb = img.into_rgb8();
        let (w, h) = rgb.dimensions();
        return Ok(RgbImage { width: w as usize, height: h as usize, data: rgb.into_raw() });
    }
    decode_png(bytes)
}

/// Width and height of a stored frame (PNG or JPEG) from its header, without decoding pixels.
pub(crate) fn frame_size(bytes: &[u8]) -> std::result::Result<(usize, usize), String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
        let (w, h) = reader.into_dimensions().map_err(|e| format!("not a readable JPEG image: {e}"))?;
        return Ok((w as usize, h as usize));
    }
    png_size(bytes).map_err(|_| "neither a PNG nor a JPEG image".to_string())
}

/// Width and height from a PNG's IHDR chunk, without decoding the pixels.
pub(crate) fn png_size(bytes: &[u8]) -> std::result::Result<(usize, usize), String> {
    const SIG: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    if bytes.len() < 24 || bytes[..8] != SIG || &bytes[12..16] != b"IHDR" {
        return Err("not a PNG image".into());
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    Ok((be(&bytes[16..20]), be(&bytes[20..24])))
}
