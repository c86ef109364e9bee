//! `gatehouse policy new NAME`: a new policy crate, copied from the default policy and built
//! against the contract this binary serves.
//!
//! The crate is the default policy (`guest/src/lib.rs`) under a new name, with the default
//! policy's decision cases in `cases/` (so `gatehouse policy test DIR` passes before the first
//! edit), the default policy's lock file (so it builds with the versions the repository
//! tests) and the same release profile. The SDK is a path dependency: the SDK of the source
//! tree this binary was built from, or `--sdk DIR`.

use std::path::{Path, PathBuf};

/// Why a policy crate could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("policy name {0:?} is invalid: use 1-40 lowercase letters, digits and '-', starting with a letter")]
    Name(String),
    #[error("{0} already exists: choose another directory, or remove it first")]
    Exists(PathBuf),
    #[error("the policy SDK is not at {0}: pass --sdk DIR (the guest/sdk directory of a Gatehouse source tree)")]
    Sdk(PathBuf),
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The SDK of the source tree this binary was built from.
pub fn default_sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/sdk")
}

/// The default policy's cases, copied into every new policy.
const CASES: &[(&str, &str)] = &[
    (
        "claim_mapping.json",
        include_str!("../../policies/default/cases/claim_mapping.json"),
    ),
    (
        "login.json",
        include_str!("../../policies/default/cases/login.json"),
    ),
    (
        "resolve.json",
        include_str!("../../policies/default/cases/resolve.json"),
    ),
    (
        "roles.json",
        include_str!("../../policies/default/cases/roles.json"),
    ),
    (
        "settings.json",
        include_str!("../../policies/default/cases/settings.json"),
    ),
];

const LOCK: &str = include_str!("../../guest/Cargo.lock");

/// Writes a new policy crate named `name` into `dir` (which must not exist yet), with its
/// SDK dependency pointing at `sdk`. Returns the files written, relative to `dir`.
pub fn new_policy(name: &str, dir: &Path, sdk: &Path) -> Result<Vec<String>, ScaffoldError> {
    let valid = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_owned()));
    }
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| ScaffoldError::Sdk(sdk.to_owned()))?;
    let package = format!("gatehouse-policy-{name}");
    let sdk_path = sdk.display().to_string().replace('\\', "/");
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), cargo_toml(&package, &sdk_path)),
        ("src/lib.rs".into(), lib_rs(name)),
        (
            "Cargo.lock".into(),
            LOCK.replace(
                "name = \"gatehouse-default-policy\"",
                &format!("name = \"{package}\""),
            ),
        ),
        ("README.md".into(), readme(name)),
        (".gitignore".into(), "/target\n".into()),
    ];
    for (file, text) in CASES {
        files.push((format!("cases/{file}"), (*text).to_owned()));
    }
    for (file, text) in &files {
        let path = dir.join(file);
        let written = match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        }
        .and_then(|()| std::fs::write(&path, text));
        written.map_err(|source| ScaffoldError::Write { path, source })?;
    }
    Ok(files.into_iter().map(|(file, _)| file).collect())
}

fn cargo_toml(package: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{package}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The policy SDK: the bindings of the gatehouse:policy contract and the default rules.
gatehouse-policy-sdk = {{ path = "{sdk}" }}

# A policy crate is a workspace of its own: its wasm build never unifies features with
# anything else.
[workspace]
resolver = "2"

# Policies run on every login and token evaluation under a fuel and time budget.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#
    )
}

fn lib_rs(name: &str) -> String {
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!(
        r#"//! The `{name}` policy. It starts as the default policy: every decision is the default
//! rule of `trait Policy`. Override the decisions you want to change (`validate_settings`,
//! `login`, `resolve`, `effective_role`, `claim_mapping`), add a case to `cases/` for each,
//! and run `gatehouse policy test .`.

use gatehouse_policy_sdk::{{export_policy, Policy, PolicyInfo}};

/// The `{name}` policy.
pub struct {type_name};

impl Policy for {type_name} {{
    fn info() -> PolicyInfo {{
        gatehouse_policy_sdk::info("{name}", env!("CARGO_PKG_VERSION"))
    }}
}}

export_policy!({type_name});
"#
    )
}

fn readme(name: &str) -> String {
    format!(
        "# {name}\n\nA Gatehouse tenant policy, scaffolded by `gatehouse policy new {name}`.\n\n\
         ```sh\n\
         gatehouse policy test .                      # build, then run cases/*.json in Wasm\n\
         gatehouse policy build .                     # target/policy.wasm\n\
         gatehouse policy push --tenant T target/policy.wasm --cases cases\n\
         ```\n\n\
         See docs/policy-authoring.md in the Gatehouse repository.\n"
    )
}
