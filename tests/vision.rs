//! Image questions against `tests/fixtures/vision` (HF transformers' Qwen2.5-VL with a tiny vision
//! config, reference/generate_vision_fixtures.py): the image processor's pixel values and grids, the
//! vision tower's merged embeddings, the M-RoPE positions of a context with two images, the logits after
//! the images and the greedy answer; on the CPU backend (DESIGN.md 8: 1e-5) and, where a GPU is present,
//! on CUDA (bf16: 2e-2 and the same greedy tokens). Also the resize and JPEG decode cases.

mod gpu;

use hbridge::chat::{ChatPipeline, ChatRequest};
use hbridge::image::context::{context_positions, encode_images, prefill_with_images};
use hbridge::image::{load_rgb, ImageLimits, PreparedImage};
use hbridge::tensor_io::read_tensors;
use hbridge_engine::cpu::HostTensor;
use hbridge_engine::device::Device;
use hbridge_graph::build::UndPrefillSpec;
use std::collections::HashMap;
use std::path::PathBuf;

const CPU_TOL: f64 = 1e-5;
const CUDA_TOL: f64 = 2e-2;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision")
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("meta.json")).unwrap()).unwrap()
}

fn outputs() -> HashMap<String, HostTensor> {
    read_tensors(&dir().join("outputs.safetensors")).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn check(what: &str, got: &[f32], want: &HostTensor, tol: f64) {
    let e = rel_l2(got, want.as_f32().unwrap());
    println!("{what}: rel L2 {e:.3e} (tol {tol:.0e})");
    assert!(e <= tol, "{what}: rel L2 {e:.3e} > {tol:.0e}");
}

/// The fixture's pipeline on `device` and its two images, preprocessed.
fn open(device: Device) -> (ChatPipeline, Vec<PreparedImage>) {
    let m = meta();
    let pipe = ChatPipeline::open_on(&dir().join(m["model"].as_str().unwrap()), device).unwrap();
    let setup = pipe.image_setup().unwrap();
    let images = m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let path = dir().join(i["file"].as_str().unwrap());
            let img = load_rgb(&path, &ImageLimits::default()).unwrap();
            setup.prepare(&path, &img).unwrap()
        })
        .collect();
    (pipe, images)
}

/// None (and a note) when there is no usable GPU; a failure instead with HBRIDGE_REQUIRE_GPU=1.
fn cuda() -> Option<Device> {
    gpu::gpu_or_skip().then_some(Device::Cuda)
}

/// Both images match the processor exactly: a (70x45 -> 56x56) resizes horizontally first, b (50x90 ->
/// 56x84) vertically first, as Pillow 13 (which made the fixture) does when the height shrinks and the width
/// loses fewer than half as many columns as the height loses rows (python-pillow/Pillow#9549;
/// `resize::vertical_first`).
#[test]
fn preprocessing_matches_the_hf_processor() {
    let (_, images) = open(Device::Cpu);
    let out = outputs();
    let grid = out["vision.grid_thw"].as_i32().unwrap();
    let want = out["vision.pixel_values"].as_f32().unwrap();
    let mut start = 0;
    for (i, img) in images.iter().enumerate() {
        let g = img.grid;
        assert_eq!(
            [g.t as i32, g.h as i32, g.w as i32],
            grid[3 * i..3 * i + 3],
            "image {i}: grid (t, h, w)"
        );
        let n = img.pixel_values.len();
        let w = HostTensor::f32(vec![n], want[start..start + n].to_vec());
        start += n;
        // The same bytes, normalized the same way in f32: the same values, bit for bit (one byte level
        // would be 1/255/std ~ 0.0146).
        check(
            &format!("vision.pixel_values of image {i}"),
            &img.pixel_values,
            &w,
            CPU_TOL,
        );
        let differ = img
            .pixel_values
            .iter()
            .zip(w.as_f32().unwrap())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "image {i}: values differ from the processor's");
    }
    assert_eq!(start, want.len());
}

fn tower_and_context(device: Device, tol: f64) {
    let (pipe, images) = open(device);
    let out = outputs();
    let model = pipe.model();
    let embeds = encode_images(model, &images).unwrap();
    check(
        &format!("vision.embeds ({device})"),
        embeds.as_f32().unwrap(),
        &out["vision.embeds"],
        tol,
    );

    let m = meta();
    let prompt = pipe
        .encode_prompt_with_images(m["question"].as_str().unwrap(), &images)
        .unwrap();
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let setup = pipe.image_setup().unwrap();
    let pos = context_positions(&ids, &setup, &images).unwrap();
    assert_eq!(
        pos,
        out["chat.position_ids"].as_i32().unwrap(),
        "M-RoPE positions of the context"
    );

    let spec = UndPrefillSpec {
        len: ids.len(),
        kv_layers: vec![],
        logits: true,
        hidden_states: false,
        final_hidden: false,
        kv_cache: None,
    };
    let (mut o, _) = prefill_with_images(model, &setup, &ids, &images, &spec).unwrap();
    let logits = o.remove("und.logits").unwrap();
    let vocab = logits.shape[1];
    let from = m["logits_from"].as_u64().unwrap() as usize;
    check(
        &format!("chat.logits from position {from} ({device})"),
        &logits.as_f32().unwrap()[from * vocab..],
        &out["chat.logits"],
        tol,
    );

    let want = out["chat.greedy_ids"].as_i32().unwrap();
    let req = ChatRequest::new().max_tokens(want.len()).no_stop();
    let answer = pipe
        .chat_stream_with_images(m["question"].as_str().unwrap(), &images, &req, |_, _| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let got: Vec<i32> = answer.tokens.iter().map(|&t| t as i32).collect();
    assert_eq!(got, want, "greedy answer about the images ({device})");
}

#[test]
fn tower_positions_logits_and_answer_on_cpu() {
    tower_and_context(Device::Cpu, CPU_TOL);
}

#[test]
fn tower_positions_logits_and_answer_on_cuda() {
    let Some(device) = cuda() else { return };
    tower_and_context(device, CUDA_TOL);
}

#[test]
fn resize_cases_match_pil() {
    let m = meta();
    for case in m["resize_cases"].as_array().unwrap() {
        let file = dir().join(case["file"].as_str().unwrap());
        let img = load_rgb(&file, &ImageLimits::default()).unwrap();
        let (min, max) = (
            case["min_pixels"].as_u64().unwrap(),
            case["max_pixels"].as_u64().unwrap(),
        );
        let want = case["resized"].as_array().unwrap();
        let (h, w) =
            hbridge::image::preprocess::smart_resize(img.height, img.width, 28, min, max).unwrap();
        assert_eq!(
            [h as u64, w as u64],
            [want[0].as_u64().unwrap(), want[1].as_u64().unwrap()],
            "{}",
            case["what"]
        );
        let got = hbridge::image::resize::resize_bicubic(&img, w, h);
        let png = load_rgb(
            &dir().join(case["expected"].as_str().unwrap()),
            &ImageLimits::default(),
        )
        .unwrap();
        assert_eq!((got.width, got.height), (png.width, png.height));
        assert!(
            got.data == png.data,
            "{}: pixels differ from PIL's",
            case["what"]
        );
    }
}

#[test]
fn jpeg_cases_decode_like_pil() {
    let m = meta();
    for case in m["jpeg_cases"].as_array().unwrap() {
        let jpg = load_rgb(
            &dir().join(case["file"].as_str().unwrap()),
            &ImageLimits::default(),
        )
        .unwrap();
        let png = load_rgb(
            &dir().join(case["expected"].as_str().unwrap()),
            &ImageLimits::default(),
        )
        .unwrap();
        assert_eq!((jpg.width, jpg.height), (png.width, png.height));
        let max_diff = jpg
            .data
            .iter()
            .zip(&png.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        // JPEG decoders may round the IDCT and upsampling differently by a level or two.
        assert!(
            max_diff <= 3,
            "{}: max channel difference {max_diff}",
            case["file"]
        );
    }
}
