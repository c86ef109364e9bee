//! Gatehouse's default policy: every decision is the rule of `gatehouse-rules`.
//!
//! The host embeds this component as the policy of every tenant that has not uploaded its
//! own; `policies/default/cases` holds the decisions it must make.

use gatehouse_policy_sdk::{export_policy, Policy, PolicyInfo};

/// The default policy: the SDK's defaults, which are the rules of `gatehouse-rules`.
struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn info() -> PolicyInfo {
        gatehouse_policy_sdk::info("default", env!("CARGO_PKG_VERSION"))
    }
}

export_policy!(DefaultPolicy);
