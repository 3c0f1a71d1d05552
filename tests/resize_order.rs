//! `resize_bicubic` against Pillow 13's `Image.resize(BICUBIC)` where the order of its two passes matters
//! (python-pillow/Pillow#9549; the rule is `hbridge::image::resize::vertical_first`): the committed cases in
//! `tests/fixtures/resize_order` (reference/check_resize_order.py fixture) and, with HBRIDGE_RESIZE_SWEEP
//! set to a directory of the same layout, a larger sweep (reference/check_resize_order.py sweep).

use hbridge::image::resize::{resize_bicubic, vertical_first};
use hbridge::image::{load_rgb, ImageLimits};
use std::path::{Path, PathBuf};

/// Checks every case of `dir/cases.json`; returns (cases, of which the vertical pass ran first).
fn check_dir(dir: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    let mut failed = Vec::new();
    let mut v_first = 0;
    for case in cases {
        let src = load_rgb(
            &dir.join(case["src"].as_str().unwrap()),
            &ImageLimits::default(),
        )
        .unwrap();
        let want = load_rgb(
            &dir.join(case["expected"].as_str().unwrap()),
            &ImageLimits::default(),
        )
        .unwrap();
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let what = format!("{}x{} -> {w}x{h}", src.width, src.height);
        let pillow = case["pillow_first_pass"].as_str().unwrap();
        if pillow == "H" || pillow == "V" {
            let ours = if vertical_first(src.width, src.height, w, h) {
                "V"
            } else {
                "H"
            };
            assert_eq!(ours, pillow, "{what}: first pass");
            v_first += usize::from(pillow == "V");
        }
        let got = resize_bicubic(&src, w, h);
        assert_eq!((got.width, got.height), (want.width, want.height), "{what}");
        if got.data != want.data {
            let n = got
                .data
                .iter()
                .zip(&want.data)
                .filter(|(a, b)| a != b)
                .count();
            failed.push(format!("{what} ({pillow} first): {n} bytes differ"));
        }
    }
    assert!(
        failed.is_empty(),
        "pixels differ from Pillow's: {failed:#?}"
    );
    (cases.len(), v_first)
}

#[test]
fn both_pass_orders_match_pillow() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize_order");
    let (n, v) = check_dir(&dir);
    assert!(
        n >= 10 && v >= 3 && n - v >= 3,
        "{n} cases, {v} vertical first"
    );
}

#[test]
fn sweep_from_env_matches_pillow() {
    let Ok(dir) = std::env::var("HBRIDGE_RESIZE_SWEEP") else {
        println!(
            "SKIPPED (HBRIDGE_RESIZE_SWEEP unset; reference/check_resize_order.py sweep sets it)"
        );
        return;
    };
    let (n, v) = check_dir(Path::new(&dir));
    println!("{n} cases bit-exact vs Pillow ({v} vertical first)");
}
