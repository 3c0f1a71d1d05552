//! The C ABI: the committed header is what cbindgen makes of src/capi; examples/c/hbridge_demo.c
//! compiles with the machine's C compiler, links against the cdylib and gives the Rust API's answer and
//! image bit for bit; every entry point refuses bad arguments with a status and a message.

mod target_runner;

use hbridge::capi::error::HbridgeStatus;
use hbridge::capi::options::*;
use hbridge::capi::*;
use hbridge::chat::ChatRequest;
use hbridge::engine::{Engine, EngineOptions};
use hbridge::t2i::ImageRequest;
use std::ffi::{c_void, CStr, CString};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tiny_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hbridge-capi-{}", std::process::id()));
        let tiny = hbridge::presets::preset("tiny").unwrap();
        hbridge::init::write_checkpoint(&dir, &tiny, 3, hbridge::init::WeightDType::BF16, true)
            .unwrap();
        dir
    })
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(hbridge_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn header() -> String {
    let config = cbindgen::Config::from_file(Path::new(ROOT).join("cbindgen.toml")).unwrap();
    let mut builder = cbindgen::Builder::new().with_config(config);
    for file in [
        "src/capi/mod.rs",
        "src/capi/error.rs",
        "src/capi/options.rs",
    ] {
        builder = builder.with_src(Path::new(ROOT).join(file));
    }
    let mut out = Vec::new();
    builder.generate().unwrap().write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn committed_header_is_current() {
    let path = Path::new(ROOT).join("include/hbridge.h");
    let fresh = header();
    if std::env::var_os("HBRIDGE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/hbridge.h is stale; regenerate with HBRIDGE_BLESS=1 cargo test --release --test c_api"
    );
    for name in [
        "hbridge_engine_create",
        "hbridge_engine_destroy",
        "hbridge_engine_warm_up",
        "hbridge_chat",
        "hbridge_chat_with_images",
        "hbridge_chat_turns",
        "hbridge_chat_session_send",
        "typedef struct HbridgeChatSession HbridgeChatSession",
        "HBRIDGE_ROLE_USER",
        "hbridge_generate_image",
        "hbridge_edit_image",
        "hbridge_last_error",
        "HBRIDGE_STATUS_OK = 0",
        "HBRIDGE_DEVICE_CPU",
        "typedef struct HbridgeEngine HbridgeEngine",
    ] {
        assert!(fresh.contains(name), "header lacks {name}");
    }
}

/// The folder holding libhbridge.so of this build (the test executable lives in `<profile>/deps`).
/// `cargo test` builds `deps/libhbridge.so`; the copy in `<profile>` is only refreshed by `cargo
/// build`, so it may be older than the code under test: the newer of the two wins.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let modified = |dir: &Path| {
        let meta = std::fs::metadata(dir.join("libhbridge.so")).ok()?;
        meta.modified().ok()
    };
    [deps.parent().unwrap(), deps]
        .into_iter()
        .filter_map(|dir| Some((modified(dir)?, dir.to_path_buf())))
        .max_by_key(|(time, _)| *time)
        .map(|(_, dir)| dir)
        .unwrap_or_else(|| panic!("no libhbridge.so next to {}", exe.display()))
}

#[test]
fn c_example_compiles_runs_and_matches_the_rust_api() {
    let dir = tiny_dir();
    let work = std::env::temp_dir().join(format!("hbridge-capi-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = work.join("hbridge_demo");
    let libs = lib_dir();
    // TARGET_CC as the `cc` crate reads it: a cross build names the target's compiler there.
    let cc = std::env::var("TARGET_CC")
        .or_else(|_| std::env::var("CC"))
        .unwrap_or_else(|_| "cc".into());
    let build = Command::new(&cc)
        .arg(Path::new(ROOT).join("examples/c/hbridge_demo.c"))
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(Path::new(ROOT).join("include"))
        .arg("-L")
        .arg(&libs)
        .arg("-lhbridge")
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    assert!(
        build.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let rgb_path = work.join("image.rgb");
    // cargo's LD_LIBRARY_PATH lists `<profile>` before `deps` and would win over the rpath.
    let run = target_runner::command(&exe)
        .arg(dir)
        .arg(&rgb_path)
        .env("LD_LIBRARY_PATH", &libs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "the C demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    assert!(stdout.contains("warm-up done"), "{stdout}");
    assert!(stdout.contains("session answers "), "{stdout}");

    // The same requests through the Rust API give the same tokens and the same pixels.
    let engine = Engine::load(dir, &EngineOptions::cpu()).unwrap();
    let answer = engine
        .chat(
            "What is a bridge?",
            &ChatRequest::new().max_tokens(8),
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    let c_tokens: Vec<u32> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("token "))
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(c_tokens, answer.tokens);
    let image = engine
        .generate_image(
            &ImageRequest::new("a red cube")
                .size(32, 32)
                .steps(2)
                .seed(7),
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(std::fs::read(&rgb_path).unwrap(), image.rgb);
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error ")).collect();
    assert_eq!(errors.len(), 4, "{stdout}");
    assert!(errors[0].contains("rgb_len"), "{}", errors[0]);
    assert!(errors[1].contains("width: 33"), "{}", errors[1]);
    assert!(
        errors[2].contains("cancelled after step 1"),
        "{}",
        errors[2]
    );
    assert!(errors[3].contains("prompt: null pointer"), "{}", errors[3]);
    std::fs::remove_dir_all(&work).ok();
}

fn create(dir: &str, options: Option<HbridgeEngineOptions>) -> (HbridgeStatus, *mut HbridgeEngine) {
    let dir = CString::new(dir).unwrap();
    let mut engine = ptr::null_mut();
    let opts = options.as_ref().map_or(ptr::null(), |o| o as *const _);
    let status = unsafe { hbridge_engine_create(dir.as_ptr(), opts, &mut engine) };
    (status, engine)
}

fn cpu_options() -> HbridgeEngineOptions {
    let mut o = std::mem::MaybeUninit::uninit();
    unsafe {
        hbridge_engine_options_default(o.as_mut_ptr());
        let mut o = o.assume_init();
        o.device = HBRIDGE_DEVICE_CPU;
        o
    }
}

#[test]
fn create_refuses_bad_arguments_with_a_status_and_a_message() {
    let (status, engine) = create("/nonexistent/hbridge-model", Some(cpu_options()));
    assert_eq!(status, HbridgeStatus::Load);
    assert!(engine.is_null());
    assert!(
        last_error().contains("/nonexistent/hbridge-model"),
        "{}",
        last_error()
    );

    let mut bad = cpu_options();
    bad.device = 9;
    let (status, _) = create(tiny_dir().to_str().unwrap(), Some(bad));
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(
        last_error().contains("options.device: 9"),
        "{}",
        last_error()
    );

    let mut bad = cpu_options();
    bad.cpu_compute = 5;
    let (status, _) = create(tiny_dir().to_str().unwrap(), Some(bad));
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(
        last_error().contains("options.cpu_compute: 5"),
        "{}",
        last_error()
    );

    let status = unsafe { hbridge_engine_create(ptr::null(), ptr::null(), ptr::null_mut()) };
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(
        last_error().contains("out: null pointer"),
        "{}",
        last_error()
    );

    let not_utf8 = [0xffu8, 0xfe, 0];
    let mut engine = ptr::null_mut();
    let status =
        unsafe { hbridge_engine_create(not_utf8.as_ptr().cast(), ptr::null(), &mut engine) };
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(
        last_error().contains("model_dir: not UTF-8"),
        "{}",
        last_error()
    );
    unsafe { hbridge_engine_destroy(ptr::null_mut()) };
}

unsafe extern "C" fn stop_after_two(
    user: *mut c_void,
    _token: u32,
    _piece: *const std::ffi::c_char,
    _len: usize,
) -> i32 {
    let n = &mut *(user as *mut u32);
    *n += 1;
    i32::from(*n >= 2)
}

#[test]
fn chat_cancels_from_the_callback_and_refuses_bad_sampling() {
    let (status, engine) = create(tiny_dir().to_str().unwrap(), Some(cpu_options()));
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    let prompt = CString::new("Tell me more").unwrap();
    let mut opts = HbridgeChatOptions {
        max_tokens: 6,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_at_eos: 0,
    };
    let mut seen = 0u32;
    let mut answered = 0u32;
    let status = unsafe {
        hbridge_chat(
            engine,
            prompt.as_ptr(),
            &opts,
            Some(stop_after_two),
            (&mut seen as *mut u32).cast(),
            &mut answered,
        )
    };
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    assert_eq!((seen, answered), (2, 2));
    assert_eq!(last_error(), "");

    opts.top_p = 0.0;
    let status = unsafe {
        hbridge_chat(
            engine,
            prompt.as_ptr(),
            &opts,
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(last_error().contains("top_p"), "{}", last_error());
    unsafe { hbridge_engine_destroy(engine) };
}

#[test]
fn memory_limit_from_c_refuses_an_oversized_request() {
    let mut o = cpu_options();
    o.memory_limit_bytes = 1024;
    let (status, engine) = create(tiny_dir().to_str().unwrap(), Some(o));
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    let prompt = CString::new("a red cube").unwrap();
    let opts = HbridgeImageOptions {
        width: 32,
        height: 32,
        steps: 2,
        guidance: 4.0,
        seed: 0,
    };
    let mut rgb = vec![0u8; 32 * 32 * 3];
    let status = unsafe {
        hbridge_generate_image(
            engine,
            prompt.as_ptr(),
            ptr::null(),
            &opts,
            None,
            ptr::null_mut(),
            rgb.as_mut_ptr(),
            rgb.len(),
        )
    };
    assert_eq!(status, HbridgeStatus::Memory);
    assert!(last_error().contains("memory limit"), "{}", last_error());
    unsafe { hbridge_engine_destroy(engine) };
}

#[test]
fn edit_from_c_matches_the_rust_api_and_reports_the_size_to_allocate() {
    let (status, engine) = create(tiny_dir().to_str().unwrap(), Some(cpu_options()));
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    // A 40x24 gradient as the reference image.
    let (w, h) = (40usize, 24usize);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    let view = HbridgeImageView {
        width: w as u32,
        height: h as u32,
        rgb: rgb.as_ptr(),
    };
    let prompt = CString::new("make it blue").unwrap();
    let mut opts = std::mem::MaybeUninit::uninit();
    let mut opts = unsafe {
        hbridge_edit_options_default(opts.as_mut_ptr());
        opts.assume_init()
    };
    opts.steps = 2;
    let (mut ow, mut oh) = (0u32, 0u32);
    let mut tiny_buf = [0u8; 3];
    let status = unsafe {
        hbridge_edit_image(
            engine,
            prompt.as_ptr(),
            ptr::null(),
            &view,
            1,
            &opts,
            None,
            ptr::null_mut(),
            tiny_buf.as_mut_ptr(),
            tiny_buf.len(),
            &mut ow,
            &mut oh,
        )
    };
    assert_eq!(status, HbridgeStatus::BufferTooSmall, "{}", last_error());
    assert!(
        ow > 0 && oh > 0,
        "the size to allocate is reported: {ow}x{oh}"
    );
    let mut out = vec![0u8; (ow * oh * 3) as usize];
    let status = unsafe {
        hbridge_edit_image(
            engine,
            prompt.as_ptr(),
            ptr::null(),
            &view,
            1,
            &opts,
            None,
            ptr::null_mut(),
            out.as_mut_ptr(),
            out.len(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());

    let rust = Engine::load(tiny_dir(), &EngineOptions::cpu()).unwrap();
    let image = hbridge::image::RgbImage::new(w, h, rgb.clone()).unwrap();
    let req = hbridge::edit::EditRequest::new("make it blue", vec![image]).steps(2);
    let want = rust
        .edit_image(&req, |_, _| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!((want.width, want.height), (ow as usize, oh as usize));
    assert_eq!(out, want.rgb);

    // No reference images: refused, naming the argument.
    let status = unsafe {
        hbridge_edit_image(
            engine,
            prompt.as_ptr(),
            ptr::null(),
            ptr::null(),
            0,
            &opts,
            None,
            ptr::null_mut(),
            out.as_mut_ptr(),
            out.len(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(last_error().contains("images: 0 given"), "{}", last_error());
    unsafe { hbridge_engine_destroy(engine) };
}

unsafe extern "C" fn collect_tokens(
    user: *mut c_void,
    token: u32,
    _piece: *const std::ffi::c_char,
    _len: usize,
) -> i32 {
    (*(user as *mut Vec<u32>)).push(token);
    0
}

fn vision_image(name: &str) -> hbridge::image::RgbImage {
    let path = Path::new(ROOT).join("tests/fixtures/vision").join(name);
    hbridge::image::load_rgb(&path, &hbridge::image::ImageLimits::default()).unwrap()
}

/// Greedy decoding of exactly `max_tokens` tokens.
fn greedy(max_tokens: u32) -> HbridgeChatOptions {
    HbridgeChatOptions {
        max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_at_eos: 0,
    }
}

/// Chat about images from C gives the Rust API's tokens; bad image views are refused by name.
#[test]
fn chat_with_images_from_c_matches_the_rust_api() {
    let model = Path::new(ROOT).join("tests/fixtures/tiny/model");
    let image = vision_image("a.png");
    let (status, engine) = create(model.to_str().unwrap(), Some(cpu_options()));
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    let prompt = CString::new("What is in this image?").unwrap();
    let opts = greedy(4);
    let view = HbridgeImageView {
        width: image.width as u32,
        height: image.height as u32,
        rgb: image.data.as_ptr(),
    };
    let mut tokens: Vec<u32> = Vec::new();
    let mut answered = 0u32;
    let status = unsafe {
        hbridge_chat_with_images(
            engine,
            prompt.as_ptr(),
            &view,
            1,
            &opts,
            Some(collect_tokens),
            (&mut tokens as *mut Vec<u32>).cast(),
            &mut answered,
        )
    };
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    assert_eq!(answered as usize, tokens.len());

    let rust = Engine::load(&model, &EngineOptions::cpu()).unwrap();
    let request = ChatRequest::new().max_tokens(4).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    let want = rust
        .chat_with_images(
            "What is in this image?",
            std::slice::from_ref(&image),
            &request,
            go,
        )
        .unwrap();
    assert_eq!(tokens, want.tokens);
    let text_only = rust.chat("What is in this image?", &request, go).unwrap();
    assert!(
        want.prompt_tokens > text_only.prompt_tokens,
        "the image's tokens are in the prompt"
    );

    let call = |images: *const HbridgeImageView, n: usize| unsafe {
        hbridge_chat_with_images(
            engine,
            prompt.as_ptr(),
            images,
            n,
            &opts,
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(call(ptr::null(), 2), HbridgeStatus::InvalidArgument);
    assert!(
        last_error().contains("images: null pointer"),
        "{}",
        last_error()
    );
    let no_pixels = HbridgeImageView {
        rgb: ptr::null(),
        ..view
    };
    assert_eq!(call(&no_pixels, 1), HbridgeStatus::InvalidArgument);
    assert!(last_error().contains("images[0].rgb"), "{}", last_error());
    let empty = HbridgeImageView { width: 0, ..view };
    assert_eq!(call(&empty, 1), HbridgeStatus::InvalidArgument);
    assert!(last_error().contains("images[0]: 0x"), "{}", last_error());
    // No images is plain chat.
    assert_eq!(call(ptr::null(), 0), HbridgeStatus::Ok, "{}", last_error());
    unsafe { hbridge_engine_destroy(engine) };
}

/// A conversation from C (system, user with an image, assistant, user) gives the Rust API's tokens; a
/// bad turn is refused with its index and field.
#[test]
fn chat_turns_from_c_match_the_rust_api() {
    use hbridge::chat::Turn;
    let model = Path::new(ROOT).join("tests/fixtures/tiny/model");
    let image = vision_image("b.png");
    let (status, engine) = create(model.to_str().unwrap(), Some(cpu_options()));
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    let texts =
        ["Be brief.", "What is this?", "A picture.", "Say more."].map(|t| CString::new(t).unwrap());
    let view = HbridgeImageView {
        width: image.width as u32,
        height: image.height as u32,
        rgb: image.data.as_ptr(),
    };
    let turn = |role, i: usize, images: *const HbridgeImageView, n_images| HbridgeTurn {
        role,
        text: texts[i].as_ptr(),
        images,
        n_images,
    };
    let mut turns = [
        turn(HBRIDGE_ROLE_SYSTEM, 0, ptr::null(), 0),
        turn(HBRIDGE_ROLE_USER, 1, &view, 1),
        turn(HBRIDGE_ROLE_ASSISTANT, 2, ptr::null(), 0),
        turn(HBRIDGE_ROLE_USER, 3, ptr::null(), 0),
    ];
    let opts = greedy(4);
    let mut tokens: Vec<u32> = Vec::new();
    let call = |turns: &[HbridgeTurn], tokens: &mut Vec<u32>| unsafe {
        hbridge_chat_turns(
            engine,
            turns.as_ptr(),
            turns.len(),
            &opts,
            Some(collect_tokens),
            (tokens as *mut Vec<u32>).cast(),
            ptr::null_mut(),
        )
    };
    assert_eq!(
        call(&turns, &mut tokens),
        HbridgeStatus::Ok,
        "{}",
        last_error()
    );

    let rust = Engine::load(&model, &EngineOptions::cpu()).unwrap();
    let images = [image.clone()];
    let want = rust
        .chat_turns(
            &[
                Turn::system("Be brief."),
                Turn::user("What is this?").with_images(&images),
                Turn::assistant("A picture."),
                Turn::user("Say more."),
            ],
            &ChatRequest::new().max_tokens(4).no_stop(),
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(tokens, want.tokens);

    turns[2].role = 7;
    assert_eq!(
        call(&turns, &mut Vec::new()),
        HbridgeStatus::InvalidArgument
    );
    assert!(
        last_error().contains("turns[2].role: 7"),
        "{}",
        last_error()
    );
    turns[2].role = HBRIDGE_ROLE_ASSISTANT;
    turns[1].images = ptr::null();
    assert_eq!(
        call(&turns, &mut Vec::new()),
        HbridgeStatus::InvalidArgument
    );
    assert!(
        last_error().contains("turns[1].images: null pointer"),
        "{}",
        last_error()
    );
    turns[1].images = &view;
    assert_eq!(
        call(&turns[..3], &mut Vec::new()),
        HbridgeStatus::InvalidArgument
    );
    assert!(last_error().contains("turn 2"), "{}", last_error());
    assert_eq!(call(&[], &mut Vec::new()), HbridgeStatus::InvalidArgument);
    unsafe { hbridge_engine_destroy(engine) };
}

/// A chat session from C: two turns give the Rust API's session tokens, a reset starts over, bad
/// arguments are refused by name.
#[test]
fn chat_sessions_from_c_match_the_rust_api() {
    use hbridge::chat::ChatSession;
    let model = Path::new(ROOT).join("tests/fixtures/tiny/model");
    let (status, engine) = create(model.to_str().unwrap(), Some(cpu_options()));
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    let system = CString::new("Be brief.").unwrap();
    let mut session = ptr::null_mut();
    let status = unsafe { hbridge_chat_session_create(system.as_ptr(), &mut session) };
    assert_eq!(status, HbridgeStatus::Ok, "{}", last_error());
    let opts = greedy(4);
    let send = |session: *mut HbridgeChatSession, prompt: &str| {
        let prompt = CString::new(prompt).unwrap();
        let mut tokens: Vec<u32> = Vec::new();
        let status = unsafe {
            hbridge_chat_session_send(
                engine,
                session,
                prompt.as_ptr(),
                ptr::null(),
                0,
                &opts,
                Some(collect_tokens),
                (&mut tokens as *mut Vec<u32>).cast(),
                ptr::null_mut(),
            )
        };
        (status, tokens)
    };
    let (s1, first) = send(session, "hi");
    assert_eq!(s1, HbridgeStatus::Ok, "{}", last_error());
    let (s2, second) = send(session, "tell me more");
    assert_eq!(s2, HbridgeStatus::Ok, "{}", last_error());

    let rust = Engine::load(&model, &EngineOptions::cpu()).unwrap();
    let mut want = ChatSession::with_system("Be brief.");
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    assert_eq!(
        first,
        rust.send(&mut want, "hi", &[], &req, go).unwrap().tokens
    );
    assert_eq!(
        second,
        rust.send(&mut want, "tell me more", &[], &req, go)
            .unwrap()
            .tokens
    );

    unsafe { hbridge_chat_session_reset(session) };
    assert_eq!(send(session, "hi").1, first);
    let (status, _) = send(ptr::null_mut(), "hi");
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    assert!(
        last_error().contains("session: null pointer"),
        "{}",
        last_error()
    );
    let status = unsafe { hbridge_chat_session_create(ptr::null(), ptr::null_mut()) };
    assert_eq!(status, HbridgeStatus::InvalidArgument);
    unsafe {
        hbridge_chat_session_destroy(session);
        hbridge_chat_session_destroy(ptr::null_mut());
        hbridge_engine_destroy(engine);
    }
}
