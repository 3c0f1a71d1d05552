//! The CPU's vector width, detected once, and `at_level!`: one loop compiled for each width. The loops
//! are plain Rust that LLVM vectorizes; the build targets baseline x86-64 (SSE2), so without this the
//! f64 sums and the exponentials would run two or four lanes wide on a machine with sixteen.

/// The widest vector instructions the CPU has, detected once: the same loops are compiled for each
/// (plain multiplies and adds, no fused ones, so every instantiation gives the same bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only x86_64 reports the wider levels
pub(crate) enum Level {
    Portable,
    Avx2,
    /// 16 lanes. On the AVX-512 build machine (16k values, L2-resident, one thread) the loops took
    /// 0.54-0.59 ns a value against AVX2's 0.72-0.74: bound by the two 512-bit ALU ports, not by width.
    Avx512,
}

pub(crate) fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// `fn $name(level, args..)`: `$body(args..)` compiled for `level`'s instructions (LLVM vectorizes the
/// inlined loops to that width). Only a level [`level`] reports, or a lower one, may be passed.
macro_rules! at_level {
    ($name:ident = $body:ident($($a:ident: $t:ty),*) -> $r:ty) => {
        fn $name(level: Level, $($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: $t),*) -> $r {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) -> $r {
                    $body($($a),*)
                }
                match level {
                    // SAFETY: AVX-512F was detected at run time (`level`).
                    Level::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: AVX2 was detected at run time (`level`).
                    Level::Avx2 => return unsafe { avx2($($a),*) },
                    Level::Portable => {}
                }
            }
            let _ = level;
            $body($($a),*)
        }
    };
}

pub(crate) use at_level;
