//! Builds the policy components the integration tests use: the example policies of
//! `policies/` and the hostile fixtures of `tests/fixtures/`, with the same tool chain as
//! `gatehouse policy build`.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir
        .parent()
        .expect("tests/ lives in the repository root")
        .to_owned();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = gatehouse_policy_build::shared_target_dir(&out_dir);
    for watched in [
        "guest/sdk",
        "guest/rules/src",
        "wit",
        "policies",
        "tests/fixtures/hostile/src",
        "tests/fixtures/hostile/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    for (name, dir) in [
        ("nested-claims", "policies/nested-claims"),
        ("department-teams", "policies/department-teams"),
        ("hostile", "tests/fixtures/hostile"),
    ] {
        match gatehouse_policy_build::build(&root.join(dir), &target_dir) {
            Ok(component) => std::fs::write(out_dir.join(format!("{name}.wasm")), component)
                .expect("OUT_DIR is writable"),
            Err(e) => {
                eprintln!("error: building {dir} failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
