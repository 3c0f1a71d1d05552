//! The OmniGen2 sampling convention (DESIGN.md 4): time runs from noise (t = 0) to data (t = 1), the model
//! predicts `v = x_data - noise`, Euler steps in f32 on a shifted schedule.

/// The N-step schedule with the dynamic shift, N + 1 values ending in exactly 1. `m = sqrt(h*w)/40`
/// over the latent's pixels; every value is computed in f64 and cast to f32.
pub fn schedule(steps: usize, latent_h: usize, latent_w: usize) -> Vec<f32> {
    let m = ((latent_h * latent_w) as f64).sqrt() / 40.0;
    let mut ts: Vec<f32> = (0..steps)
        .map(|i| {
            let t = i as f64 / steps as f64;
            (t / (m - m * t + t)) as f32
        })
        .collect();
    ts.push(1.0);
    ts
}

/// Text guidance `u + s * (c - u)`, in place into `cond`.
pub fn guide_text(cond: &mut [f32], uncond: &[f32], scale: f32) {
    for (c, u) in cond.iter_mut().zip(uncond) {
        *c = *u + scale * (*c - *u);
    }
}

/// Three-branch guidance with reference images (DESIGN.md 4), in place into `cond`:
/// `u + s_img * (r - u) + s_txt * (c - r)`, evaluated left to right in f32 as the reference does.
/// `refonly` is r = (negative prompt, refs), `uncond` is u = (negative prompt, no refs).
pub fn guide_image_text(cond: &mut [f32], refonly: &[f32], uncond: &[f32], s_img: f32, s_txt: f32) {
    for ((c, r), u) in cond.iter_mut().zip(refonly).zip(uncond) {
        *c = *u + s_img * (*r - *u) + s_txt * (*c - *r);
    }
}

/// One Euler step `x += dt * v`.
pub fn euler_step(x: &mut [f32], velocity: &[f32], dt: f32) {
    for (x, v) in x.iter_mut().zip(velocity) {
        *x += dt * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ends_at_one_and_increases() {
        for (steps, h, w) in [(4, 8, 12), (50, 128, 128), (1, 2, 2)] {
            let s = schedule(steps, h, w);
            assert_eq!(s.len(), steps + 1);
            assert_eq!(s[0], 0.0);
            assert_eq!(*s.last().unwrap(), 1.0);
            assert!(s.windows(2).all(|p| p[0] < p[1]), "{s:?}");
        }
        // 1024x1024 pixels -> 128x128 latent -> m = 3.2: t = 0.5 maps to 0.5 / (3.2 - 1.6 + 0.5).
        let s = schedule(2, 128, 128);
        assert!((s[1] - (0.5f64 / 2.1) as f32).abs() < 1e-7);
    }

    #[test]
    fn guidance_and_euler() {
        let mut c = vec![1.0, 2.0];
        guide_text(&mut c, &[0.0, 1.0], 4.0);
        assert_eq!(c, vec![4.0, 5.0]);
        // u = 1, r = 2, c = 4: 1 + 2 * (2 - 1) + 3 * (4 - 2) = 9
        let mut c = vec![4.0];
        guide_image_text(&mut c, &[2.0], &[1.0], 2.0, 3.0);
        assert_eq!(c, vec![9.0]);
        let mut x = vec![1.0, 1.0];
        euler_step(&mut x, &[2.0, -2.0], 0.25);
        assert_eq!(x, vec![1.5, 0.5]);
    }
}
