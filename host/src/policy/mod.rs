//! The policy engine: the only module that names wasmtime.
//!
//! A policy is a WebAssembly component implementing `gatehouse:policy/decide` (`wit/`).
//! [`PolicyEngine`] compiles and sandboxes components; [`Registry`] holds the policy each
//! tenant runs and swaps it atomically. The engine never decides anything itself: it
//! asks the component, checks the answer's shape, and hands it back.

mod answer;
mod bindings;
mod engine;
mod registry;
pub mod ring;
pub mod shadow;

pub use engine::{sha256, Limits, PolicyEngine};
pub use registry::{AutoRollback, Registry, RoleExplanation, TenantPolicy, Trip, RING_CAPACITY};

use gatehouse_rules as rules;

/// The contract version this host implements (`wit/policy.wit`). It serves every 0.1.x
/// component: `decide` is required, `explain` (since 0.1.1) and `naming` (since 0.1.2) are
/// used when present.
pub const CONTRACT: &str = "0.1.2";

/// The optional interface of 0.1.1, by its full name (wasmtime's export lookup also finds
/// a semver-compatible 0.1.x version of it).
const EXPLAIN_INTERFACE: &str = "gatehouse:policy/explain@0.1.1";

/// The optional interface of 0.1.2, by its full name.
const NAMING_INTERFACE: &str = "gatehouse:policy/naming@0.1.2";

/// The built-in default policy (`guest/`), built into a component by `host/build.rs`.
pub static DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-policy.wasm"));

/// A compiled, type-checked policy component, ready to instantiate.
pub struct Compiled {
    component: wasmtime::component::Component,
    pre: bindings::PolicyPre<engine::Sandbox>,
    /// `explain-role` of the optional `explain` interface (contract 0.1.1), if exported.
    explain_role: Option<wasmtime::component::ComponentExportIndex>,
    /// `team-name` of the optional `naming` interface (contract 0.1.2), if exported.
    team_name: Option<wasmtime::component::ComponentExportIndex>,
    /// SHA-256 of the component's bytes.
    pub sha256: [u8; 32],
    /// What the component says about itself.
    pub info: rules::PolicyInfo,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &hex::encode(self.sha256))
            .field("info", &self.info)
            .field("naming", &self.team_name.is_some())
            .finish()
    }
}

/// Why a policy could not be used or could not decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("component is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("not a usable policy component: {0}")]
    Invalid(String),
    #[error("a policy imports nothing, but this component imports {}", .0.join(", "))]
    Imports(Vec<String>),
    #[error("the component implements gatehouse:policy@{found}; this host implements gatehouse:policy@{CONTRACT} (compatible: 0.1.x)")]
    Contract { found: String },
    #[error("the policy refused its settings: {0}")]
    Settings(String),
    #[error("the policy ran past its {}ms deadline", .0.as_millis())]
    Timeout(std::time::Duration),
    #[error("the policy needed more than its {} MiB of memory", .0 >> 20)]
    OutOfMemory(usize),
    #[error("the policy trapped: {0}")]
    Trap(String),
    #[error("the policy gave a malformed answer: {0}")]
    Malformed(String),
    #[error("every policy sandbox is busy")]
    Busy,
    #[error("the tenant's policy could not be loaded: {0}")]
    Unavailable(String),
    #[error("policy engine failure: {0}")]
    Engine(String),
}

impl PolicyError {
    /// Whether the same decision may well succeed if asked again: it ran out of time
    /// (a deadline is wall-clock, so a starved CPU can cause it) or found no free sandbox.
    /// Callers answer these 503 with `Retry-After`, the others as the policy's fault.
    pub fn is_transient(&self) -> bool {
        matches!(self, PolicyError::Timeout(_) | PolicyError::Busy)
    }

    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::TooLarge { .. } => "too_large",
            PolicyError::Invalid(_) => "invalid",
            PolicyError::Imports(_) => "imports",
            PolicyError::Contract { .. } => "contract",
            PolicyError::Settings(_) => "settings",
            PolicyError::Timeout(_) => "timeout",
            PolicyError::OutOfMemory(_) => "out_of_memory",
            PolicyError::Trap(_) => "trap",
            PolicyError::Malformed(_) => "malformed",
            PolicyError::Busy => "busy",
            PolicyError::Unavailable(_) => "unavailable",
            PolicyError::Engine(_) => "engine",
        }
    }
}

impl Compiled {
    /// Whether the component exports the optional `naming` interface (contract 0.1.2);
    /// without it the host derives team names by the default rule.
    pub fn has_naming(&self) -> bool {
        self.team_name.is_some()
    }

    /// Whether the component exports the optional `explain` interface (contract 0.1.1).
    pub fn has_explain(&self) -> bool {
        self.explain_role.is_some()
    }
}

/// Runs decision cases (`policies/*/cases/*.json`) through a compiled component, each with
/// the settings its input carries.
pub struct CaseRunner<'a> {
    engine: &'a PolicyEngine,
    compiled: &'a Compiled,
}

impl<'a> CaseRunner<'a> {
    /// A runner for `compiled` on `engine`.
    pub fn new(engine: &'a PolicyEngine, compiled: &'a Compiled) -> Self {
        CaseRunner { engine, compiled }
    }
}

impl rules::cases::Evaluator for CaseRunner<'_> {
    type Error = PolicyError;
    fn login(&mut self, input: &rules::LoginInput) -> Result<rules::LoginDecision, PolicyError> {
        self.engine.login(self.compiled, input)
    }
    fn resolve(
        &mut self,
        input: &rules::ResolveInput,
    ) -> Result<rules::ResolveDecision, PolicyError> {
        self.engine.resolve(self.compiled, input)
    }
    fn effective_role(
        &mut self,
        inputs: &[rules::RoleInput],
        settings: &str,
    ) -> Result<Vec<rules::RoleDecision>, PolicyError> {
        self.engine.effective_role(self.compiled, inputs, settings)
    }
    fn claim_mapping(
        &mut self,
        idp: &rules::IdpClaims,
        settings: &str,
    ) -> Result<rules::ClaimMap, PolicyError> {
        self.engine.claim_mapping(self.compiled, idp, settings)
    }
    fn validate_settings(&mut self, settings: &str) -> Result<Result<(), String>, PolicyError> {
        self.engine.validate_settings(self.compiled, settings)
    }
}
