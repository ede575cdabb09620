//! Frames of LeRobot video features (`dtype: "video"`): mp4 files that hold the frames of one
//! camera for one or more episodes, decoded on demand (cargo feature `video`, through the system's
//! FFmpeg libraries).
//!
//! Where a frame is follows LeRobot 0.6.1 (`dataset_reader.py`, `video_utils.py`): the episode's
//! row in `meta/episodes/` gives its file (`videos/{key}/chunk_index`, `videos/{key}/file_index`,
//! filled into `info.json`'s `video_path`) and the time in that file where the episode starts
//! (`videos/{key}/from_timestamp`); a frame's time in the file is that start plus the frame's
//! `timestamp`. The frame returned is the decoded frame nearest that time, and a nearest frame
//! [`TOLERANCE_S`] or further away is an error, as in LeRobot.
//!
//! Nothing is decoded when a dataset opens: a camera keeps one [`EpisodeVideo`] per episode, and
//! each loader thread keeps a few decoders open (the last frames decoded and the file position),
//! so frames read in order decode each packet once and a random frame seeks to the key frame at
//! or before its time and decodes forward from there.

use super::RgbImage;
use crate::engine::{Error, Result};
use std::path::{Path, PathBuf};

/// How far, in seconds, the decoded frame nearest a frame's time may be from it (LeRobot's
/// default `tolerance_s`).
pub const TOLERANCE_S: f64 = 1e-4;

/// Where one episode's frames of a video camera are.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EpisodeVideo {
    /// Index into [`VideoFrames::files`].
    pub file: usize,
    /// Time in the file, in seconds, of the episode's first frame.
    pub from: f64,
}

/// A video camera's frames: its files and, per episode, where in them the episode lies.
#[derive(Debug, Default)]
pub(crate) struct VideoFrames {
    pub files: Vec<PathBuf>,
    pub episodes: Vec<EpisodeVideo>,
}

impl VideoFrames {
    /// The file holding a frame of episode `episode` with timestamp `timestamp`, and its time there.
    pub fn locate(&self, episode: usize, timestamp: f32) -> Option<(&Path, f64)> {
        let e = self.episodes.get(episode)?;
        Some((self.files.get(e.file)?, e.from + f64::from(timestamp)))
    }

    /// Decode the frame nearest `time` in `path` to RGB, checking its size against `(width,
    /// height)`. Errors name the file, the camera `key`, the frame index and the time.
    pub fn decode(path: &Path, time: f64, key: &str, frame: usize, size: (usize, usize)) -> Result<RgbImage> {
        let at = |msg: String| Error::file(path, format!("camera `{key}`: frame {frame} at {time:.6} s: {msg}"));
        #[cfg(feature = "video")]
        {
            ffmpeg::frame_at(path, time, size).map_err(at)
        }
        #[cfg(not(feature = "video"))]
        {
            let _ = size;
            Err(at(format!("video features need vlm4vla built with `--features video` ({ENABLE_VIDEO})")))
        }
    }
}

/// How to enable video features, for error messages.
pub(crate) const ENABLE_VIDEO: &str = "build with `--features video`; it links the system's FFmpeg \
     libraries (Debian/Ubuntu: apt-get install libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
     libclang-dev pkg-config)";

#[cfg(feature = "video")]
mod ffmpeg {
    //! Decoding through `ffmpeg-next`: one [`OpenVideo`] per file, a few per thread.

    use super::{RgbImage, TOLERANCE_S};
    use ffmpeg_next as ff;
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    /// Open files kept per thread (least recently used closed first): a few cameras, each
    /// reading one file at a time.
    const OPEN_PER_THREAD: usize = 8;
    /// Forward jumps longer than this seek instead of decoding every frame between.
    const DECODE_AHEAD_S: f64 = 1.0;

    thread_local! {
        static OPEN: RefCell<Vec<OpenVideo>> = const { RefCell::new(Vec::new()) };
    }

    static INIT: std::sync::Once = std::sync::Once::new();

    /// The frame of `path` nearest `time` (seconds), as RGB of `(width, height)`.
    pub fn frame_at(path: &Path, time: f64, (width, height): (usize, usize)) -> Result<RgbImage, String> {
        INIT.call_once(|| {
            let _ = ff::init();
            // What goes wrong comes back as an error naming the file, camera and frame; FFmpeg's
            // own messages would repeat per frame from every loader thread.
            ff::util::log::set_level(ff::util::log::Level::Fatal);
        });
        OPEN.with_borrow_mut(|open| {
            let slot = match open.iter().position(|v| v.path == path) {
                Some(i) => i,
                None => {
                    if open.len() >= OPEN_PER_THREAD {
                        open.remove(0);
                    }
                    open.push(OpenVideo::open(path)?);
                    open.len() - 1
                }
            };
            let mut video = open.remove(slot);
            let result = video.rgb_at(time, width, height);
            // A decoder that failed starts afresh next time.
            if result.is_ok() {
                open.push(video);
            }
            result
        })
    }

    /// A decoded frame and its time in the file (seconds).
    struct Decoded {
        time: f64,
        frame: ff::frame::Video,
    }

    struct OpenVideo {
        path: PathBuf,
        input: ff::format::context::Input,
        decoder: ff::decoder::Video,
        stream: usize,
        /// Seconds per tick of the stream's timestamps.
        time_base: f64,
        scaler: Option<Scaler>,
        /// The last two frames decoded, older first: the frame at or after the time asked for
        /// and the one before it.
        prev: Option<Decoded>,
        cur: Option<Decoded>,
        /// The decoder has returned its last frame.
        ended: bool,
    }

    struct Scaler {
        format: ff::format::Pixel,
        width: u32,
        height: u32,
        context: ff::software::scaling::Context,
    }

    impl OpenVideo {
        fn open(path: &Path) -> Result<OpenVideo, String> {
            if !path.is_file() {
                return Err("no such video file".into());
            }
            let input = ff::format::input(path).map_err(|e| format!("not a readable video file: {e}"))?;
            let stream = input.streams().best(ff::media::Type::Video).ok_or("the file holds no video stream")?;
            let index = stream.index();
            let tb = stream.time_base();
            if tb.numerator() <= 0 || tb.denominator() <= 0 {
                return Err(format!("the video stream's time base {tb} is not positive"));
            }
            let context = ff::codec::context::Context::from_parameters(stream.parameters())
                .map_err(|e| format!("reading the video stream's parameters: {e}"))?;
            let decoder = context.decoder().video().map_err(|e| format!("no decoder for the video stream: {e}"))?;
            Ok(OpenVideo {
                path: path.to_path_buf(),
                input,
                decoder,
                stream: index,
                time_base: f64::from(tb.numerator()) / f64::from(tb.denominator()),
                scaler: None,
                prev: None,
                cur: None,
                ended: false,
            })
        }

        /// The decoded frame nearest `time`, within [`TOLERANCE_S`], converted to RGB.
        fn rgb_at(&mut self, time: f64, width: usize, height: usize) -> Result<RgbImage, String> {
            // Frames from `prev` on are decoded; going back before them or far ahead seeks.
            let reusable = match (&self.prev, &self.cur) {
                (_, None) => false,
                (p, Some(c)) => time >= p.as_ref().unwrap_or(c).time && time <= c.time + DECODE_AHEAD_S,
            };
            if !reusable {
                self.seek(time)?;
            }
            while !self.ended && self.cur.as_ref().is_none_or(|c| c.time < time) {
                self.decode_next()?;
            }
            let nearest = [&self.prev, &self.cur]
                .into_iter()
                .flatten()
                .min_by(|a, b| (a.time - time).abs().total_cmp(&(b.time - time).abs()))
                .ok_or("no frame could be decoded")?;
            if (nearest.time - time).abs() >= TOLERANCE_S {
                let last = if self.ended { " (the video's last frame)" } else { "" };
                return Err(format!(
                    "the nearest frame in the video is at {:.6} s{last}, further than the tolerance of {TOLERANCE_S} s",
                    nearest.time
                ));
            }
            to_rgb(&mut self.scaler, &nearest.frame, width, height)
        }

        /// Seek to the key frame at or before `time` and forget what was decoded.
        fn seek(&mut self, time: f64) -> Result<(), String> {
            let ts = (time.max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)).floor() as i64;
            if self.input.seek(ts, ..ts).is_err() {
                // No key frame at or before: the file starts later; take its first key frame.
                self.input.seek(0, ..).map_err(|e| format!("seeking: {e}"))?;
            }
            self.decoder.flush();
            self.prev = None;
            self.cur = None;
            self.ended = false;
            Ok(())
        }

        /// Decode the next frame (in presentation order) into `cur`, or mark the end.
        fn decode_next(&mut self) -> Result<(), String> {
            loop {
                let mut frame = ff::frame::Video::empty();
                match self.decoder.receive_frame(&mut frame) {
                    Ok(()) => {
                        let Some(pts) = frame.pts() else { continue };
                        self.prev = self.cur.take();
                        self.cur = Some(Decoded { time: pts as f64 * self.time_base, frame });
                        return Ok(());
                    }
                    Err(ff::Error::Eof) => {
                        self.ended = true;
                        return Ok(());
                    }
                    Err(ff::Error::Other { errno: ff::util::error::EAGAIN }) => self.feed()?,
                    Err(e) => return Err(format!("decoding: {e}")),
                }
            }
        }

        /// Send the decoder the stream's next packet (or the end of the stream).
        fn feed(&mut self) -> Result<(), String> {
            let mut packet = ff::Packet::empty();
            loop {
                match packet.read(&mut self.input) {
                    Ok(()) if packet.stream() == self.stream => {
                        return self.decoder.send_packet(&packet).map_err(|e| format!("decoding: {e}"));
                    }
                    Ok(()) => {}
                    Err(ff::Error::Eof) => return self.decoder.send_eof().map_err(|e| format!("decoding: {e}")),
                    Err(e) => return Err(format!("reading the file: {e}")),
                }
            }
        }
    }

    /// `frame` (any pixel format) as RGB24 through swscale, as PyAV's `to_ndarray("rgb24")` does
    /// (bilinear, the default colour matrix).
    fn to_rgb(
        scaler: &mut Option<Scaler>,
        frame: &ff::frame::Video,
        width: usize,
        height: usize,
    ) -> Result<RgbImage, String> {
        let (w, h, format) = (frame.width(), frame.height(), frame.format());
        if (w as usize, h as usize) != (width, height) {
            return Err(format!("the video's frames are {w}x{h}, info.json gives {width}x{height}"));
        }
        let mut s = match scaler.take() {
            Some(s) if (s.format, s.width, s.height) == (format, w, h) => s,
            _ => {
                let context = ff::software::scaling::Context::get(
                    format,
                    w,
                    h,
                    ff::format::Pixel::RGB24,
                    w,
                    h,
                    ff::software::scaling::Flags::BILINEAR,
                )
                .map_err(|e| format!("converting pixel format {format:?} to RGB: {e}"))?;
                Scaler { format, width: w, height: h, context }
            }
        };
        let mut rgb = ff::frame::Video::empty();
        let ran = s.context.run(frame, &mut rgb);
        *scaler = Some(s);
        ran.map_err(|e| format!("converting pixel format {format:?} to RGB: {e}"))?;
        let (stride, plane) = (rgb.stride(0), rgb.data(0));
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            data.extend_from_slice(&plane[y * stride..y * stride + width * 3]);
        }
        Ok(RgbImage { width, height, data })
    }
}
