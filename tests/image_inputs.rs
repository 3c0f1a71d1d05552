//! Image inputs from the outside (issue 6 items 3-4): PNG and JPEG files load; unreadable files,
//! unsupported formats, corrupt data, zero-sized images and images over the pixel limit are typed errors
//! that name the file; `hbridge chat -i` answers about an image and refuses a bad one before loading
//! the model.

mod target_runner;

use hbridge::image::{load_rgb, ImageError, ImageLimits};
use std::path::{Path, PathBuf};

fn vision(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vision")
        .join(name)
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hbridge-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG signature and IHDR chunk claiming `width x height` RGB8 pixels, the start of an IDAT chunk (a
/// zlib header, no pixels) and IEND: enough for a decoder to read the size, nothing to decode.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c]);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn png_and_jpeg_load() {
    let png = load_rgb(&vision("a.png"), &ImageLimits::default()).unwrap();
    assert_eq!(
        (png.width, png.height, png.data.len()),
        (70, 45, 70 * 45 * 3)
    );
    let jpg = load_rgb(&vision("e.jpg"), &ImageLimits::default()).unwrap();
    assert_eq!((jpg.width, jpg.height), (40, 24));
}

#[test]
fn bad_files_are_typed_errors_naming_the_file() {
    let limits = ImageLimits::default();
    let missing = Path::new("/nonexistent/picture.png");
    let e = load_rgb(missing, &limits).unwrap_err();
    assert!(matches!(e, ImageError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/picture.png"), "{e}");

    let text = scratch("notes.png", b"this is not an image at all");
    let e = load_rgb(&text, &limits).unwrap_err();
    assert!(matches!(e, ImageError::UnsupportedFormat { .. }), "{e:?}");
    assert!(e.to_string().contains("notes.png"), "{e}");

    let whole = std::fs::read(vision("a.png")).unwrap();
    let cut = scratch("cut.png", &whole[..whole.len() / 2]);
    let e = load_rgb(&cut, &limits).unwrap_err();
    assert!(matches!(e, ImageError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("cut.png"), "{e}");

    let jpeg = std::fs::read(vision("e.jpg")).unwrap();
    let cut = scratch("cut.jpg", &jpeg[..jpeg.len() / 3]);
    let e = load_rgb(&cut, &limits).unwrap_err();
    assert!(matches!(e, ImageError::Decode { .. }), "{e:?}");
}

#[test]
fn zero_sized_and_oversized_images_are_refused() {
    let limits = ImageLimits::default();
    let zero = scratch("zero.png", &png_header(0, 16));
    let e = load_rgb(&zero, &limits).unwrap_err();
    assert!(
        matches!(e, ImageError::ZeroSized { .. } | ImageError::Decode { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("zero.png"), "{e}");

    // A header claiming 100k x 100k pixels is refused before any pixel is decoded.
    let huge = scratch("huge.png", &png_header(100_000, 100_000));
    let e = load_rgb(&huge, &limits).unwrap_err();
    assert!(matches!(e, ImageError::TooManyPixels { .. }), "{e:?}");

    let small = ImageLimits {
        max_pixels: 1000,
        ..limits
    };
    let e = load_rgb(&vision("a.png"), &small).unwrap_err();
    assert!(matches!(e, ImageError::TooManyPixels { .. }), "{e:?}");
    assert!(
        e.to_string().contains("a.png") && e.to_string().contains("1000"),
        "{e}"
    );
}

#[test]
fn cli_chat_answers_about_an_image_and_names_a_bad_one() {
    let model = vision("../tiny/model");
    let out = target_runner::hbridge()
        .args(["--device", "cpu", "chat"])
        .arg(&model)
        .arg("-i")
        .arg(vision("a.png"))
        .arg("-i")
        .arg(vision("e.jpg"))
        .args([
            "-p",
            "What is in these images?",
            "--max-tokens",
            "4",
            "--no-stop",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hbridge chat -i failed: {stderr}");

    let out = target_runner::hbridge()
        .args(["--device", "cpu", "chat"])
        .arg(&model)
        .args(["-i", "/nonexistent/cat.jpg", "-p", "What is this?"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/cat.jpg"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
