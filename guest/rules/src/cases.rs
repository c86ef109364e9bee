//! Decision cases: `input → expected decision`, stored as JSON in `policies/*/cases/*.json`.
//!
//! A case file holds one JSON array of cases. Each case names the decision it exercises:
//!
//! ```json
//! [{ "name": "jit creates an unknown email", "decision": "login",
//!    "input": { "mode": "jit", "sso_configured": true, "claims": { "email": "a@x.io" } },
//!    "expect": { "create": { "email": "a@x.io", "display_name": null,
//!                            "given_name": null, "family_name": null } } }]
//! ```
//!
//! The same cases run natively (against this crate's rules) and through a compiled
//! component (the host's engine): anything that implements [`Evaluator`] can run them.
//! Only outcomes are compared; traces are free text.

use crate::{
    ClaimMap, IdpClaims, LoginDecision, LoginInput, LoginOutcome, Resolution, ResolveDecision,
    ResolveInput, RoleDecision, RoleInput,
};
use serde::{Deserialize, Serialize};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// One named case.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(flatten)]
    pub kind: CaseKind,
}

/// The decision a case exercises, its input and the expected outcome.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CaseKind {
    Login {
        input: LoginInput,
        expect: LoginOutcome,
    },
    Resolve {
        input: ResolveInput,
        expect: Resolution,
    },
    EffectiveRole {
        input: Vec<RoleInput>,
        /// The tenant's settings (default: none).
        #[serde(default)]
        settings: String,
        expect: Vec<RoleDecision>,
    },
    ClaimMapping {
        input: ClaimMappingInput,
        expect: ClaimMap,
    },
    ValidateSettings {
        input: String,
        expect: SettingsVerdict,
    },
}

/// Input of the claim-mapping decision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimMappingInput {
    #[serde(default)]
    pub idp: IdpClaims,
    #[serde(default)]
    pub settings: String,
}

/// Expected answer of `validate-settings`: accepted, or refused with a message that
/// contains `message_contains` (when given).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsVerdict {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_contains: Option<String>,
}

/// Something that can make the policy's decisions: the native rules, or a component.
pub trait Evaluator {
    type Error: Display;
    fn login(&mut self, input: &LoginInput) -> Result<LoginDecision, Self::Error>;
    fn resolve(&mut self, input: &ResolveInput) -> Result<ResolveDecision, Self::Error>;
    fn effective_role(
        &mut self,
        inputs: &[RoleInput],
        settings: &str,
    ) -> Result<Vec<RoleDecision>, Self::Error>;
    fn claim_mapping(&mut self, idp: &IdpClaims, settings: &str) -> Result<ClaimMap, Self::Error>;
    fn validate_settings(&mut self, settings: &str) -> Result<Result<(), String>, Self::Error>;
}

/// The rules of this crate, evaluated natively.
pub struct Native;

impl Evaluator for Native {
    type Error = std::convert::Infallible;
    fn login(&mut self, input: &LoginInput) -> Result<LoginDecision, Self::Error> {
        Ok(crate::login(input))
    }
    fn resolve(&mut self, input: &ResolveInput) -> Result<ResolveDecision, Self::Error> {
        Ok(crate::resolve(input))
    }
    fn effective_role(
        &mut self,
        inputs: &[RoleInput],
        _settings: &str,
    ) -> Result<Vec<RoleDecision>, Self::Error> {
        Ok(crate::effective_role(inputs))
    }
    fn claim_mapping(&mut self, idp: &IdpClaims, settings: &str) -> Result<ClaimMap, Self::Error> {
        Ok(crate::claim_mapping(idp, settings))
    }
    fn validate_settings(&mut self, settings: &str) -> Result<Result<(), String>, Self::Error> {
        Ok(crate::validate_settings(settings))
    }
}

/// What running one case gave.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    /// The expected outcome, as JSON.
    pub expected: serde_json::Value,
    /// The actual outcome, as JSON (or `{"error": "..."}` when evaluation failed).
    pub actual: serde_json::Value,
}

impl Case {
    /// Runs the case on `evaluator` and compares outcomes.
    pub fn run<E: Evaluator>(&self, evaluator: &mut E) -> CaseReport {
        let json = |v: &dyn erased::ToJson| v.to_json();
        let (expected, actual) = match &self.kind {
            CaseKind::Login { input, expect } => (
                json(expect),
                evaluator.login(input).map(|d| json(&d.outcome)),
            ),
            CaseKind::Resolve { input, expect } => (
                json(expect),
                evaluator.resolve(input).map(|d| json(&d.outcome)),
            ),
            CaseKind::EffectiveRole {
                input,
                settings,
                expect,
            } => (
                json(expect),
                evaluator.effective_role(input, settings).map(|d| json(&d)),
            ),
            CaseKind::ClaimMapping { input, expect } => (
                json(expect),
                evaluator
                    .claim_mapping(&input.idp, &input.settings)
                    .map(|d| json(&d)),
            ),
            CaseKind::ValidateSettings { input, expect } => {
                let actual = evaluator
                    .validate_settings(input)
                    .map(|verdict| match verdict {
                        Ok(()) => serde_json::json!({ "ok": true }),
                        Err(message) => serde_json::json!({ "ok": false, "message": message }),
                    });
                let passed = match &actual {
                    Ok(value) => {
                        value["ok"] == expect.ok
                            && expect.message_contains.as_deref().is_none_or(|needle| {
                                value["message"]
                                    .as_str()
                                    .is_some_and(|m| m.contains(needle))
                            })
                    }
                    Err(_) => false,
                };
                return CaseReport {
                    name: self.name.clone(),
                    passed,
                    expected: json(expect),
                    actual: actual
                        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
                };
            }
        };
        let actual = actual.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        CaseReport {
            name: self.name.clone(),
            passed: expected == actual,
            expected,
            actual,
        }
    }
}

mod erased {
    /// Object-safe `Serialize` to JSON, so `Case::run` can treat every outcome alike.
    pub trait ToJson {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> ToJson for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// Errors reading case files.
#[derive(Debug)]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

impl Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for LoadError {}

/// Parses one case file (a JSON array of cases).
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Loads every `*.json` file of `dir`, in file-name order; each case is returned with the
/// name of its file.
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Case)>, LoadError> {
    let err = |path: &Path, message: String| LoadError {
        path: path.to_owned(),
        message,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for case in parse(&text).map_err(|e| err(&path, e))? {
            cases.push((file.clone(), case));
        }
    }
    Ok(cases)
}
