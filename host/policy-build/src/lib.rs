//! Builds a Gatehouse policy crate into a WebAssembly component.
//!
//! A policy crate is an ordinary Rust `cdylib` that implements the `gatehouse:policy` world
//! with `wit-bindgen`. Building it is two steps, the same ones `cargo component` or
//! `wasm-tools component new` would take:
//!
//! 1. `cargo build --release --target wasm32-unknown-unknown` gives a core module that
//!    carries the world's type information in a custom section;
//! 2. `wit-component` wraps that module into a component.
//!
//! The host's build script uses this for the built-in default policy, the integration
//! tests for their fixtures, and `gatehouse policy build` for tenants' own policies, so
//! there is exactly one way a policy gets built.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target every policy is compiled for: no WASI, no imports, pure computation.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// What can go wrong while building a policy.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "the {WASM_TARGET} target is not installed and `rustup target add {WASM_TARGET}` failed: {0}; \
         install it with rustup, or use a toolchain that has it"
    )]
    Target(String),
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cargo build of {crate_dir} failed (exit {status}); its output is above")]
    Cargo { crate_dir: PathBuf, status: String },
    #[error("cargo build of {0} produced no .wasm cdylib: is `crate-type = [\"cdylib\"]` set?")]
    NoArtifact(PathBuf),
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not turn the module into a component: {0}")]
    Componentize(String),
}

/// Makes sure the toolchain that will build policies has the wasm target, installing it
/// with rustup when it is missing.
pub fn ensure_wasm_target() -> Result<(), BuildError> {
    if wasm_target_installed() {
        return Ok(());
    }
    let output = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Target(format!("rustup could not be run ({e})")))?;
    if !output.status.success() || !wasm_target_installed() {
        return Err(BuildError::Target(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn wasm_target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|libdir| {
            std::fs::read_dir(libdir).is_ok_and(|mut entries| {
                entries.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                })
            })
        })
}

/// Compiles the policy crate in `crate_dir` to a core wasm module (release profile) with
/// `target_dir` as cargo's target directory, and returns the module's path.
///
/// Cargo's output goes to this process's stderr so a failing build explains itself.
pub fn build_module(crate_dir: &Path, target_dir: &Path) -> Result<PathBuf, BuildError> {
    ensure_wasm_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(crate_dir)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--target",
            WASM_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // When this runs inside a build script, the outer cargo's settings (its target dir,
    // its features, clippy's wrapper, host rustflags) must not leak into the wasm build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let outer = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                &*key,
                "RUSTC_WORKSPACE_WRAPPER" | "RUSTFLAGS" | "RUSTDOCFLAGS"
            );
        if outer {
            command.env_remove(&*key);
        }
    }
    let output = command.output().map_err(|source| BuildError::Spawn {
        program: cargo.to_string_lossy().into_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildError::Cargo {
            crate_dir: crate_dir.to_owned(),
            status: output
                .status
                .code()
                .map_or_else(|| "by signal".into(), |c| c.to_string()),
        });
    }
    cdylib_artifact(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| BuildError::NoArtifact(crate_dir.to_owned()))
}

/// Finds the `.wasm` file of the last cdylib artifact in cargo's JSON messages.
fn cdylib_artifact(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter(|line| line.contains("\"compiler-artifact\"") && line.contains("\"cdylib\""))
        .find_map(|line| {
            // Cargo's JSON is regular enough to pick `filenames` without a JSON parser, and
            // this crate is a build dependency of the host: keep it small.
            let start = line.find("\"filenames\":[")? + "\"filenames\":[".len();
            let list = &line[start..start + line[start..].find(']')?];
            list.split(',')
                .map(|f| f.trim().trim_matches('"').replace("\\\\", "\\"))
                .find(|f| f.ends_with(".wasm"))
        })
        .map(PathBuf::from)
}

/// `<target>/wasm-policies` for a build script with `out_dir` as its `OUT_DIR`: one cargo
/// target directory shared by every policy build of a checkout (the host's, the tests',
/// any profile's), so wasm dependencies compile once.
pub fn shared_target_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(out_dir)
        .join("wasm-policies")
}

/// Wraps a core module built with `wit-bindgen` into a component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, BuildError> {
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(module)
        .and_then(|encoder| encoder.encode())
        .map_err(|e| BuildError::Componentize(format!("{e:#}")))
}

/// Builds the policy crate in `crate_dir` and returns the component's bytes.
pub fn build(crate_dir: &Path, target_dir: &Path) -> Result<Vec<u8>, BuildError> {
    let module_path = build_module(crate_dir, target_dir)?;
    let module = std::fs::read(&module_path).map_err(|source| BuildError::Read {
        path: module_path,
        source,
    })?;
    componentize(&module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cdylib_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"crate_types":["lib"]},"filenames":["/t/libdep.rlib"]}
{"reason":"compiler-artifact","target":{"kind":["cdylib"],"crate_types":["cdylib"]},"filenames":["/t/wasm32-unknown-unknown/release/my_policy.wasm"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            cdylib_artifact(messages),
            Some(PathBuf::from(
                "/t/wasm32-unknown-unknown/release/my_policy.wasm"
            ))
        );
    }

    #[test]
    fn no_cdylib_means_no_artifact() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"filenames":["/t/libdep.rlib"]}"#;
        assert_eq!(cdylib_artifact(messages), None);
    }

    #[test]
    fn a_plain_module_without_world_metadata_is_refused() {
        // (module) has no component-type section, so there is no world to wrap it in...
        // but an empty module is still a valid (empty) component; a broken one is not.
        let err = componentize(b"\0asm\x01\0\0\0\x05").unwrap_err();
        assert!(matches!(err, BuildError::Componentize(_)), "{err}");
    }
}
