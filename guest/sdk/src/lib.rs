//! Write a Gatehouse policy component in a few lines.
//!
//! This crate is the only place that runs `wit_bindgen::generate!` for the
//! `gatehouse:policy` world (`wit/policy.wit`). It converts the WIT values to the plain
//! types of [`gatehouse_rules`] and back at the edge, so a policy is written against
//! those types alone, and every decision it does not override is the default rule:
//!
//! ```
//! use gatehouse_policy_sdk::{export_policy, rules, ClaimMap, IdpClaims, Policy, PolicyInfo};
//!
//! struct Groups;
//!
//! impl Policy for Groups {
//!     fn info() -> PolicyInfo {
//!         gatehouse_policy_sdk::info("groups", env!("CARGO_PKG_VERSION"))
//!     }
//!
//!     fn claim_mapping(idp: &IdpClaims, settings: &str) -> ClaimMap {
//!         let mut map = rules::claim_mapping(idp, settings);
//!         map.team_claim.get_or_insert_with(|| "groups".to_owned());
//!         map
//!     }
//! }
//!
//! export_policy!(Groups);
//! ```
//!
//! Build the crate (`crate-type = ["cdylib"]`) for `wasm32-unknown-unknown` and wrap it into
//! a component: `gatehouse policy build DIR` does both.

// Deny, not forbid: the generated bindings need `unsafe` for the canonical ABI.
#![deny(unsafe_code)]

pub use gatehouse_rules as rules;
pub use gatehouse_rules::{
    Claim, ClaimMap, ExistingUser, IdpClaims, LoginClaims, LoginDecision, LoginInput, LoginOutcome,
    NewUser, PolicyInfo, ProvisioningMode, Refusal, Resolution, ResolveDecision, ResolveInput,
    Role, RoleDecision, RoleInput, RoleSource, TeamCandidate, UserCandidate, UserMatch,
    UserResolution, UserSource, UserStatus, VaCandidate, CONTRACT_VERSION,
};

mod convert;

#[cfg(target_arch = "wasm32")]
mod alloc;

/// Every policy built with the SDK allocates from an arena in its initial memory first
/// (`alloc.rs`): a decision then costs the host no memory growth. A policy crate must not
/// declare a `#[global_allocator]` of its own.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: alloc::PolicyAllocator = alloc::PolicyAllocator::new();

#[cfg(feature = "cases")]
mod evaluator;
#[cfg(feature = "cases")]
pub use evaluator::PolicyEvaluator;

/// The generated bindings of the `gatehouse:policy` world. Public only because the code
/// that [`export_policy!`] expands to, in the policy's crate, names them.
#[doc(hidden)]
#[allow(unsafe_code)] // the generated ABI glue is unsafe by nature
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "gatehouse_policy_sdk::bindings",
    });
}

use bindings::exports::gatehouse::policy::decide as wit;
use bindings::exports::gatehouse::policy::explain as wit_explain;
use bindings::exports::gatehouse::policy::naming as wit_naming;
use convert::Wire;

/// A Gatehouse policy: the decisions of `wit/policy.wit`, on the types of
/// [`gatehouse_rules`]. Every decision but [`Policy::info`] defaults to the default
/// policy's rule, so a policy overrides only what it changes.
///
/// The methods are associated functions: a policy component has no state between calls
/// (the host may run each call in a fresh instance), so there is no `self` to keep any.
pub trait Policy {
    /// The policy's own name and version; build it with [`info`] so the contract version
    /// is the one this SDK was built against.
    fn info() -> PolicyInfo;

    /// Accepts the tenant's settings (JSON text), or refuses them with a lowercase message
    /// that says what was wrong and what is allowed.
    fn validate_settings(settings: &str) -> Result<(), String> {
        rules::validate_settings(settings)
    }

    /// The outcome of an SSO login (SPEC §2).
    fn login(input: &LoginInput) -> LoginDecision {
        rules::login(input)
    }

    /// Which identity a verified external token is (SPEC §4).
    fn resolve(input: &ResolveInput) -> ResolveDecision {
        rules::resolve(input)
    }

    /// The effective role of each input, in input order (SPEC §5).
    fn effective_role(inputs: &[RoleInput], settings: &str) -> Vec<RoleDecision> {
        let _ = settings; // the default rule has no role settings
        rules::effective_role(inputs)
    }

    /// Which claims carry the user, the virtual-account name and the teams, for an
    /// identity provider with these overrides. Must depend only on its inputs: the host
    /// caches the answer per policy version and identity provider.
    fn claim_mapping(idp: &IdpClaims, settings: &str) -> ClaimMap {
        rules::claim_mapping(idp, settings)
    }

    /// The rules [`Policy::effective_role`] applies to `input`, in order, for `policy
    /// explain` (contract 0.1.1, interface `explain`). The default is the default rule's
    /// trace while this policy decides as the default rule does; a policy that decides
    /// roles its own way and does not override this gets a line saying so.
    fn explain_role(input: &RoleInput, settings: &str) -> Vec<String> {
        let ours = Self::effective_role(std::slice::from_ref(input), settings);
        let default = rules::effective_role(std::slice::from_ref(input));
        if ours == default {
            return rules::explain_role(input);
        }
        match ours.first() {
            Some(d) => vec![format!(
                "role {:?} (source {:?}) decided by the policy's own effective-role, which gives no trace",
                d.role, d.source
            )
            .to_lowercase()],
            None => vec!["the policy's effective-role gave no decision".to_owned()],
        }
    }

    /// The rule-following team name (`^[A-Za-z0-9_-]{1,36}$`) of a SCIM group whose
    /// `displayName` is `display_name` (contract 0.1.2, interface `naming`). The default is
    /// [`rules::team_name`]; the host makes the name unique, so a policy only says what the
    /// name should look like.
    fn team_name(display_name: &str, settings: &str) -> String {
        let _ = settings; // the default rule has no naming settings
        rules::team_name(display_name)
    }
}

/// The [`PolicyInfo`] of a policy named `name` at `version`, for the contract version of
/// this SDK ([`CONTRACT_VERSION`]).
pub fn info(name: &str, version: &str) -> PolicyInfo {
    PolicyInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        contract: CONTRACT_VERSION.to_owned(),
    }
}

/// Any [`Policy`] is the component's implementation of the `decide` interface.
impl<P: Policy> wit::Guest for P {
    fn info() -> wit::PolicyInfo {
        P::info().wire()
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        P::validate_settings(&settings)
    }

    fn login(input: wit::LoginInput) -> wit::LoginDecision {
        P::login(&input.wire()).wire()
    }

    fn resolve(input: wit::ResolveInput) -> wit::ResolveDecision {
        P::resolve(&input.wire()).wire()
    }

    fn effective_role(inputs: Vec<wit::RoleInput>, settings: String) -> Vec<wit::RoleDecision> {
        let inputs: Vec<RoleInput> = inputs.wire();
        P::effective_role(&inputs, &settings).wire()
    }

    fn claim_mapping(idp: wit::IdpClaims, settings: String) -> wit::ClaimMap {
        P::claim_mapping(&idp.wire(), &settings).wire()
    }
}

/// Any [`Policy`] is the component's implementation of the `explain` interface (0.1.1).
impl<P: Policy> wit_explain::Guest for P {
    fn explain_role(input: wit::RoleInput, settings: String) -> Vec<String> {
        P::explain_role(&input.wire(), &settings)
    }
}

/// Any [`Policy`] is the component's implementation of the `naming` interface (0.1.2).
impl<P: Policy> wit_naming::Guest for P {
    fn team_name(display_name: String, settings: String) -> String {
        P::team_name(&display_name, &settings)
    }
}

/// Exports a [`Policy`] type (by name) as the component's `decide`, `explain` and `naming` interfaces:
/// `export_policy!(MyPolicy);` once, at the root of the policy's `cdylib` crate.
///
/// Only a wasm build exports anything; natively the policy stays an ordinary type that
/// tests call directly or through `PolicyEvaluator` (feature `cases`).
#[macro_export]
macro_rules! export_policy {
    ($policy:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export!($policy with_types_in $crate::bindings);
        // Natively nothing is exported; this keeps the type checked as a `Policy` and
        // counted as used, so a native build or test of the crate stays warning-free.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() -> $crate::PolicyInfo = <$policy as $crate::Policy>::info;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract version the SDK reports is the version of the WIT package it binds.
    #[test]
    fn contract_version_matches_the_wit_package() {
        let wit = include_str!("../../../wit/policy.wit");
        let package = wit
            .lines()
            .find_map(|line| line.trim().strip_prefix("package gatehouse:policy@"))
            .expect("wit/policy.wit declares package gatehouse:policy@VERSION");
        assert_eq!(package.trim_end_matches(';'), CONTRACT_VERSION);
    }

    #[test]
    fn info_carries_the_contract_version() {
        let info = info("example", "1.2.3");
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("example", "1.2.3")
        );
        assert_eq!(info.contract, CONTRACT_VERSION);
    }
}
