//! The version fingerprint test (projections/tests/version.rs) catches a projection whose
//! output changed without a version bump: built with the test-only `variant-unbumped`
//! feature (story titles upper-cased, version left at 1) it fails and says to bump; with
//! `variant-v2` (the same change, version 2) it passes. Builds into target/variant.

use std::process::Command;

fn fingerprint_test(feature: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "test",
            "-p",
            "projections",
            "--test",
            "version",
            "--features",
            feature,
        ])
        .arg("--target-dir")
        .arg(format!("{root}/target/variant"))
        .output()
        .expect("cargo runs")
}

#[test]
fn an_output_change_without_a_version_bump_fails_the_fingerprint_test() {
    let out = fingerprint_test("variant-unbumped");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the unbumped variant passed:\n{text}"
    );
    assert!(
        text.contains("but PROJECTION_VERSION is still 1")
            && text.contains("bump PROJECTION_VERSION"),
        "{text}"
    );
}

#[test]
fn the_same_change_with_the_bump_passes() {
    let out = fingerprint_test("variant-v2");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
