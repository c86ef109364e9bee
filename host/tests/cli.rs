//! The `gatehouse` command line: help, and clear refusals of bad configuration. (Being an
//! integration test of this package also makes `cargo test --workspace` build the binary
//! that `tests/` starts.)

use std::process::Command;

fn gatehouse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn help_lists_the_subcommands() {
    let output = gatehouse().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for subcommand in ["serve", "policy", "tenant"] {
        assert!(help.contains(subcommand), "{help}");
    }
}

#[test]
fn an_unknown_environment_setting_is_refused_by_name() {
    let data = tempfile::tempdir().unwrap();
    let output = gatehouse()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("GATEHOUSE_LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GATEHOUSE_LISTN"), "{stderr}");
}

#[test]
fn a_short_operator_token_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let output = gatehouse()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("GATEHOUSE_OPERATOR_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
}

#[test]
fn policy_test_without_cases_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("p.wasm");
    std::fs::write(&component, b"\0asm\x0d\0\x01\0").unwrap();
    let output = gatehouse()
        .args(["policy", "test"])
        .arg(dir.path())
        .arg("--component")
        .arg(&component)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.is_empty() && !stderr.contains("panicked"),
        "{stderr}"
    );
}
