//! The CPU backend against every tensor of every reference fixture (DESIGN.md 8: relative L2 <= 1e-5).

mod fixture_check;

use fixture_check::check_fixture;

const TOLERANCE: f64 = 1e-5;

fn check(name: &str) {
    check_fixture(name, |_| Some(TOLERANCE), 1);
}

#[test]
fn cpu_matches_reference_tiny() {
    check("tiny");
}

#[test]
fn cpu_matches_reference_tiny_b() {
    check("tiny-b");
}

#[test]
fn cpu_matches_reference_tiny_omnigen2() {
    check("tiny-omnigen2");
}
