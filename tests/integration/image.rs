//! The image's Dockerfile and release workflow agree with the chart and the
//! crate: the image's user is the one the chart's Pod Security context
//! names (distroless's nonroot, 65532), and the Rust that builds the image
//! and the release is the crate's minimum. The release binary itself is
//! built and checked by `scripts/check-release-binary` in `.ci/run`.

use crate::common;

fn read(path: &str) -> String {
    std::fs::read_to_string(common::repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_image_runs_as_the_charts_user_with_the_crates_rust() {
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage names a USER")
        .trim()
        .to_string();
    let deployment = read("charts/idsync/templates/deployment.yaml");
    let field = |name: &str| {
        deployment
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap_or_else(|| panic!("the chart sets {name}"))
    };
    assert_eq!(user, format!("{}:{}", field("runAsUser"), field("runAsGroup")), "image USER vs chart");
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"), "distroless, no shell");
    assert!(dockerfile.contains("cargo build --release --locked --bin idsync"), "the binary CI checks");
    assert!(read("scripts/check-release-binary").contains("cargo build --release --locked --bin idsync"));

    let manifest = read("Cargo.toml");
    let rust = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("rust-version");
    assert!(dockerfile.contains(&format!("ARG RUST_VERSION={rust}")), "the Dockerfile builds with Rust {rust}");
    let workflow = read(".github/workflows/release.yml");
    assert!(workflow.contains(&format!("dtolnay/rust-toolchain@{rust}")), "the release builds with Rust {rust}");
    assert!(workflow.contains("platforms: linux/amd64,linux/arm64"), "a multi-arch image");
    assert!(read(".ci/run").contains("scripts/check-release-binary"));
}
