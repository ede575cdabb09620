//! Datasets larger than the frame memory limit: the encoded frames spill to a mapped file while
//! the data files are read batch by batch, the resident memory stays well below the frames'
//! size, and every frame decodes as from an in-memory open.

use rand::{Rng, SeedableRng};
use vlm4vla::data::{DatasetKeys, LeRobotDataset, LeRobotWriter, Loader, LoaderConfig};

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn frames_beyond_the_memory_limit_stream_from_a_mapped_file() {
    let dir = std::env::temp_dir().join(format!("vlm4vla-streaming-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Noise frames do not compress: 1,200 frames of 64×64 are about 15 MB of PNG.
    let (side, frames) = (64usize, 1200usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut w = LeRobotWriter::create(&dir, 10, [side, side, 3], 2, 7, "noise").unwrap();
    for f in 0..frames {
        let img: Vec<u8> = (0..side * side * 3).map(|_| rng.gen()).collect();
        w.add_frame(&img, &[f as f32, 0.0], &[0.1; 7]).unwrap();
        if f % 100 == 99 {
            w.end_episode("move").unwrap();
        }
    }
    w.finish().unwrap();

    let before = rss_bytes();
    let keys = DatasetKeys { memory_limit: 1 << 20, ..DatasetKeys::default() };
    let mapped = LeRobotDataset::open_with(&dir, &keys).unwrap();
    let grown = rss_bytes().saturating_sub(before);
    let bytes = mapped.frame_bytes();
    println!("{frames} frames, {bytes} bytes of PNG; resident memory grew by {grown} bytes opening them mapped");
    assert!(mapped.frames_mapped() && bytes > 12 << 20, "{bytes}");
    assert!(grown < bytes / 3, "resident memory grew by {grown} bytes for {bytes} bytes of frames");
    // No spill file is left in the temporary directory (it is unlinked once mapped).
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("vlm4vla-frames-{}-", std::process::id())))
        .count();
    assert_eq!(leftovers, 0);

    let memory = LeRobotDataset::open(&dir).unwrap();
    assert!(!memory.frames_mapped());
    for i in (0..frames).step_by(37) {
        assert_eq!(mapped.png(i), memory.png(i), "frame {i}");
        assert_eq!(mapped.decode_image(i).unwrap(), memory.decode_image(i).unwrap(), "frame {i}");
    }
    // The loader's workers read the mapped frames.
    let cfg = LoaderConfig { batch_size: 16, chunk: 2, ..LoaderConfig::default() };
    let a = Loader::new(std::sync::Arc::new(mapped), cfg.clone()).unwrap().epoch(0).take(3).map(|b| b.unwrap());
    let b = Loader::new(std::sync::Arc::new(memory), cfg).unwrap().epoch(0).take(3).map(|b| b.unwrap());
    for (x, y) in a.zip(b) {
        assert_eq!(x, y);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
