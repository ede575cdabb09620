//! Image preprocessing against Pillow 13 and transformers 5.24 (fixtures from
//! `tools/golden/gen_common.py`): bicubic and bilinear resizes bit-exact, PNG mode conversion
//! like `convert("RGB")`, normalisation ≤ 1e-6 (in practice bit-exact), Qwen's `smart_resize`,
//! and the bad-input paths.

use std::path::PathBuf;
use vlm4vla::engine::SafeTensorsFile;
use vlm4vla::models::common::image::{
    center_crop, pixel_values, rescale_normalize, resize_bicubic, resize_bilinear, shortest_edge_size, smart_resize,
    RgbImage, CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/common")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn golden() -> SafeTensorsFile {
    SafeTensorsFile::open(fixtures().join("images.safetensors")).unwrap()
}

/// A `[H, W, 3]` u8 fixture tensor as an image.
fn golden_image(f: &SafeTensorsFile, name: &str) -> RgbImage {
    let shape = f.shape(name).unwrap().to_vec();
    assert_eq!(shape.len(), 3, "{name}");
    let data = f.get(name, None).unwrap().to_vec::<u8>().unwrap();
    RgbImage::from_raw(data, shape[1], shape[0], shape[2]).unwrap()
}

/// Largest absolute difference in levels, and how many bytes differ.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let d = a.data.iter().zip(&b.data).map(|(x, y)| x.abs_diff(*y));
    (d.clone().max().unwrap_or(0), d.filter(|&v| v > 0).count())
}

fn tmp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("vlm4vla-img-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn resizes_match_pillow_exactly() {
    let f = golden();
    let m = manifest();
    let cases = m["resize"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let img = RgbImage::load(fixtures().join(case["png"].as_str().unwrap())).unwrap();
        let size: Vec<usize> = case["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!((img.width, img.height), (size[0], size[1]), "{name}");
        let t: Vec<usize> = case["target"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        for (kind, ours) in [
            ("bicubic", resize_bicubic(&img, t[0], t[1]).unwrap()),
            ("bilinear", resize_bilinear(&img, t[0], t[1]).unwrap()),
        ] {
            let want = golden_image(&f, &format!("{name}.{kind}"));
            let (max, count) = diff(&ours, &want);
            assert_eq!((max, count), (0, 0), "{name} {kind}: max difference {max} levels in {count} bytes");
        }
    }
}

#[test]
fn png_modes_convert_like_pillow() {
    let f = golden();
    for case in manifest()["modes"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let img = RgbImage::load(fixtures().join(case["png"].as_str().unwrap())).unwrap();
        let want = golden_image(&f, &format!("{name}.rgb"));
        assert_eq!(img, want, "{name} (Pillow mode {})", case["pillow_mode"]);
    }
}

#[test]
fn siglip_processor_matches_transformers() {
    let f = golden();
    let m = manifest();
    let p = &m["processor"];
    let img = RgbImage::load(fixtures().join(p["png"].as_str().unwrap())).unwrap();
    let size: Vec<usize> = p["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let resized = resize_bicubic(&img, size[0], size[1]).unwrap();
    assert_eq!(resized, golden_image(&f, "siglip.resized"));
    for (key, mean, std) in [
        ("siglip.pixel_values", stats(p, "siglip_mean"), stats(p, "siglip_std")),
        ("clip.pixel_values", stats(p, "clip_mean"), stats(p, "clip_std")),
    ] {
        assert_eq!(f.shape(key).unwrap(), [3, size[1], size[0]]);
        let want = f.get(key, None).unwrap().to_vec::<f32>().unwrap();
        let ours = rescale_normalize(&resized, mean, std);
        assert_eq!(ours.len(), want.len());
        let max = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-6, "{key}: max abs error {max}");
        // The f64 rescale followed by f32 arithmetic reproduces numpy bit for bit.
        assert!(ours.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{key}: not bit-exact (max {max})");
    }
}

#[test]
fn clip_processor_and_center_crop_match_transformers() {
    let f = golden();
    let m = manifest();
    let p = &m["processor"];
    let img = RgbImage::load(fixtures().join(p["png"].as_str().unwrap())).unwrap();
    assert_eq!(stats(p, "clip_mean"), CLIP_MEAN);
    assert_eq!(stats(p, "clip_std"), CLIP_STD);
    assert_eq!((stats(p, "siglip_mean"), stats(p, "siglip_std")), (SIGLIP_MEAN, SIGLIP_STD));

    // Kosmos-2's CLIPImageProcessor: shortest edge, bicubic, centre crop, CLIP statistics.
    let shortest = p["clip_shortest_edge"].as_u64().unwrap() as usize;
    let (h, w) = shortest_edge_size(img.height, img.width, shortest);
    let resized = resize_bicubic(&img, w, h).unwrap();
    let crop = p["clip_crop"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect::<Vec<_>>();
    let cropped = center_crop(&resized, crop[0], crop[1]).unwrap();
    let ours = rescale_normalize(&cropped, CLIP_MEAN, CLIP_STD);
    let want = f.get("clip_processor.pixel_values", None).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(ours.len(), want.len());
    let max = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max <= 1e-6, "CLIP processor: max abs error {max}");

    for c in p["center_crops"].as_array().unwrap() {
        let (cw, ch) = (c[0].as_u64().unwrap() as usize, c[1].as_u64().unwrap() as usize);
        let want = golden_image(&f, &format!("center_crop.{cw}x{ch}"));
        assert_eq!(center_crop(&img, cw, ch).unwrap(), want, "crop {cw}x{ch} of {}x{}", img.width, img.height);
    }
    assert!(center_crop(&img, 0, 3).is_err());

    // The batch helper equals the SigLIP processor output.
    let size: Vec<usize> = p["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let pv = pixel_values(&[img.clone(), img], size[0], size[1], SIGLIP_MEAN, SIGLIP_STD).unwrap();
    assert_eq!(pv.shape(), [2, 3, size[1], size[0]]);
    let want = f.get("siglip.pixel_values", None).unwrap().to_vec::<f32>().unwrap();
    let got = pv.to_vec::<f32>().unwrap();
    assert_eq!(&got[..want.len()], &want[..]);
    assert_eq!(&got[want.len()..], &want[..]);
    assert!(pixel_values(&[], 4, 4, SIGLIP_MEAN, SIGLIP_STD).is_err());
}

fn stats(p: &serde_json::Value, k: &str) -> [f32; 3] {
    let v: Vec<f32> = p[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    [v[0], v[1], v[2]]
}

#[test]
fn smart_resize_matches_transformers() {
    for c in manifest()["smart_resize"].as_array().unwrap() {
        let g = |k: &str| c[k].as_u64().unwrap() as usize;
        let want = (c["expected"][0].as_u64().unwrap() as usize, c["expected"][1].as_u64().unwrap() as usize);
        let got = smart_resize(g("height"), g("width"), g("factor"), g("min_pixels"), g("max_pixels")).unwrap();
        assert_eq!(got, want, "{c}");
    }
    let err = smart_resize(10, 2010, 28, 3136, 12845056).unwrap_err().to_string();
    assert!(err.contains("aspect ratio"), "{err}");
    assert!(smart_resize(0, 10, 28, 3136, 12845056).is_err());
}

#[test]
fn identity_resize_is_a_copy_and_small_cases_work() {
    let img = RgbImage::from_raw((0..4 * 3 * 3).map(|v| (v * 7) as u8).collect(), 4, 3, 3).unwrap();
    assert_eq!(resize_bicubic(&img, 4, 3).unwrap(), img);
    let one = resize_bicubic(&img, 1, 1).unwrap();
    assert_eq!(one.data.len(), 3);
    let big = resize_bilinear(&RgbImage::from_raw(vec![9, 8, 7], 1, 1, 3).unwrap(), 5, 3).unwrap();
    assert!(big.data.chunks(3).all(|p| p == [9, 8, 7]));
}

#[test]
fn from_raw_converts_gray_and_rgba() {
    let g = RgbImage::from_raw(vec![1, 2], 2, 1, 1).unwrap();
    assert_eq!(g.data, [1, 1, 1, 2, 2, 2]);
    let a = RgbImage::from_raw(vec![1, 2, 3, 4, 5, 6, 7, 8], 1, 2, 4).unwrap();
    assert_eq!(a.data, [1, 2, 3, 5, 6, 7]);
    assert_eq!(a.pixel(0, 1), [5, 6, 7]);
}

#[test]
fn bad_images_are_clear_errors() {
    let err = RgbImage::from_raw(vec![0; 8], 2, 2, 2).unwrap_err().to_string();
    assert!(err.contains("2 channels"), "{err}");
    let err = RgbImage::from_raw(vec![], 0, 4, 3).unwrap_err().to_string();
    assert!(err.contains("0x4") && err.contains("empty"), "{err}");
    let err = RgbImage::from_raw(vec![0; 5], 2, 1, 3).unwrap_err().to_string();
    assert!(err.contains("5 bytes"), "{err}");

    let img = RgbImage::from_raw(vec![0; 12], 2, 2, 3).unwrap();
    let err = resize_bicubic(&img, 0, 3).unwrap_err().to_string();
    assert!(err.contains("0x3"), "{err}");
    let broken = RgbImage { width: 3, height: 3, data: vec![0; 5] };
    assert!(resize_bicubic(&broken, 2, 2).is_err());

    let dir = tmp_dir("bad");
    let missing = dir.join("missing.png");
    let err = RgbImage::load(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.png"), "{err}");
    let garbage = dir.join("garbage.png");
    std::fs::write(&garbage, b"this is not a png").unwrap();
    let err = RgbImage::load(&garbage).unwrap_err().to_string();
    assert!(err.contains("garbage.png") && err.contains("PNG"), "{err}");
    // A PNG cut short.
    let good = std::fs::read(fixtures().join("identity_64x64.png")).unwrap();
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let err = RgbImage::load(&cut).unwrap_err().to_string();
    assert!(err.contains("cut.png"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
