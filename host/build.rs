//! Builds the built-in default policy (`guest/`) into a component, so that `cargo build`,
//! `cargo run` and `cargo test` need no manual step on a fresh machine.
//!
//! Checkouts (git worktrees) that share one `CARGO_TARGET_DIR` also share this script's
//! `OUT_DIR` (cargo hashes workspace-relative paths) and the wasm target directory, so the
//! default policy embedded may be another checkout's: after switching checkouts, or when
//! `wit/` differs between them, `touch host/build.rs` to rebuild it from this one.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir
        .parent()
        .expect("host/ lives in the repository root")
        .to_owned();
    for watched in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "guest/sdk",
        "guest/rules/src",
        "guest/rules/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let component = match gatehouse_policy_build::build(
        &root.join("guest"),
        &gatehouse_policy_build::shared_target_dir(&out_dir),
    ) {
        Ok(component) => component,
        Err(e) => {
            eprintln!("error: building the default policy (guest/) failed: {e}");
            std::process::exit(1);
        }
    };
    std::fs::write(out_dir.join("default-policy.wasm"), component).expect("OUT_DIR is writable");
}
