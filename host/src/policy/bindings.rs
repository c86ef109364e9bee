//! The WIT bindings of `gatehouse:policy` and their conversion to and from the domain
//! types of `gatehouse_rules`. Nothing outside `policy` sees a binding type.

use gatehouse_rules as rules;

// The world of what every 0.1.x component exports (`decide`); the `explain` interface of
// 0.1.1 is looked up by name, as optional (`engine.rs`, docs/policy-contract.md).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy-required",
});

pub(crate) use exports::gatehouse::policy::decide as wit;
pub(crate) use PolicyRequired as Policy;
pub(crate) use PolicyRequiredPre as PolicyPre;

/// `settings` replaces the input's own (the tenant's settings, without cloning the input).
pub(crate) fn login_input(i: &rules::LoginInput, settings: &str) -> wit::LoginInput {
    wit::LoginInput {
        mode: match i.mode {
            rules::ProvisioningMode::Scim => wit::ProvisioningMode::Scim,
            rules::ProvisioningMode::Jit => wit::ProvisioningMode::Jit,
            rules::ProvisioningMode::InviteOnly => wit::ProvisioningMode::InviteOnly,
        },
        sso_configured: i.sso_configured,
        claims: wit::LoginClaims {
            email: i.claims.email.clone(),
            subject: i.claims.subject.clone(),
            name: i.claims.name.clone(),
            given_name: i.claims.given_name.clone(),
            family_name: i.claims.family_name.clone(),
        },
        user: i.user.as_ref().map(|u| wit::ExistingUser {
            id: u.id.clone(),
            status: user_status(u.status),
            source: match u.source {
                rules::UserSource::Scim => wit::UserSource::Scim,
                rules::UserSource::Jit => wit::UserSource::Jit,
                rules::UserSource::Invite => wit::UserSource::Invite,
                rules::UserSource::Migration => wit::UserSource::Migration,
            },
        }),
        settings: settings.to_owned(),
    }
}

fn user_status(s: rules::UserStatus) -> wit::UserStatus {
    match s {
        rules::UserStatus::Invited => wit::UserStatus::Invited,
        rules::UserStatus::Active => wit::UserStatus::Active,
        rules::UserStatus::Deactivated => wit::UserStatus::Deactivated,
    }
}

fn role_to_wit(r: rules::Role) -> wit::Role {
    match r {
        rules::Role::Admin => wit::Role::Admin,
        rules::Role::Member => wit::Role::Member,
    }
}

fn role_from_wit(r: wit::Role) -> rules::Role {
    match r {
        wit::Role::Admin => rules::Role::Admin,
        wit::Role::Member => rules::Role::Member,
    }
}

fn refusal(r: wit::Refusal) -> rules::Refusal {
    rules::Refusal {
        code: r.code,
        message: r.message,
    }
}

pub(crate) fn login_decision(d: wit::LoginDecision) -> rules::LoginDecision {
    rules::LoginDecision {
        outcome: match d.outcome {
            wit::LoginOutcome::Create(u) => rules::LoginOutcome::Create(rules::NewUser {
                email: u.email,
                display_name: u.display_name,
                given_name: u.given_name,
                family_name: u.family_name,
            }),
            wit::LoginOutcome::Activate(id) => rules::LoginOutcome::Activate(id),
            wit::LoginOutcome::Allow(id) => rules::LoginOutcome::Allow(id),
            wit::LoginOutcome::Refuse(r) => rules::LoginOutcome::Refuse(refusal(r)),
        },
        trace: d.trace,
    }
}

/// `settings` replaces the input's own (the tenant's settings, without cloning the input).
pub(crate) fn resolve_input(i: &rules::ResolveInput, settings: &str) -> wit::ResolveInput {
    wit::ResolveInput {
        idp: i.idp.clone(),
        user_claim: i.user_claim.clone(),
        va_name: i.va_name.clone(),
        team_values: i.team_values.clone(),
        extra: i
            .extra
            .iter()
            .map(|c| wit::Claim {
                path: c.path.clone(),
                values: c.values.clone(),
            })
            .collect(),
        virtual_accounts: i
            .virtual_accounts
            .iter()
            .map(|v| wit::VaCandidate {
                id: v.id.clone(),
                name: v.name.clone(),
                enabled: v.enabled,
            })
            .collect(),
        users: i
            .users
            .iter()
            .map(|u| wit::UserCandidate {
                id: u.id.clone(),
                email: u.email.clone(),
                status: user_status(u.status),
                matched_by: match u.matched_by {
                    rules::UserMatch::Mapping => wit::UserMatch::Mapping,
                    rules::UserMatch::Email => wit::UserMatch::Email,
                },
                teams: u.teams.clone(),
            })
            .collect(),
        teams: i
            .teams
            .iter()
            .map(|t| wit::TeamCandidate {
                id: t.id.clone(),
                name: t.name.clone(),
                matched: t.matched.clone(),
            })
            .collect(),
        settings: settings.to_owned(),
    }
}

pub(crate) fn resolve_decision(d: wit::ResolveDecision) -> rules::ResolveDecision {
    rules::ResolveDecision {
        outcome: match d.outcome {
            wit::Resolution::VirtualAccount(id) => rules::Resolution::VirtualAccount(id),
            wit::Resolution::User(u) => rules::Resolution::User(rules::UserResolution {
                id: u.id,
                teams: u.teams,
            }),
            wit::Resolution::Refuse(r) => rules::Resolution::Refuse(refusal(r)),
        },
        trace: d.trace,
    }
}

pub(crate) fn role_input(i: &rules::RoleInput) -> wit::RoleInput {
    wit::RoleInput {
        manual: i.manual.map(role_to_wit),
        team_roles: i.team_roles.iter().copied().map(role_to_wit).collect(),
    }
}

pub(crate) fn role_decision(d: wit::RoleDecision) -> rules::RoleDecision {
    rules::RoleDecision {
        role: role_from_wit(d.role),
        source: match d.source {
            wit::RoleSource::Manual => rules::RoleSource::Manual,
            wit::RoleSource::Group => rules::RoleSource::Group,
            wit::RoleSource::Initial => rules::RoleSource::Initial,
        },
    }
}

pub(crate) fn idp_claims(c: &rules::IdpClaims) -> wit::IdpClaims {
    wit::IdpClaims {
        user_claim: c.user_claim.clone(),
        va_name_claim: c.va_name_claim.clone(),
        team_claim: c.team_claim.clone(),
    }
}

pub(crate) fn claim_map(m: wit::ClaimMap) -> rules::ClaimMap {
    rules::ClaimMap {
        user_claim: m.user_claim,
        va_name_claim: m.va_name_claim,
        team_claim: m.team_claim,
        extra_claims: m.extra_claims,
    }
}

pub(crate) fn policy_info(i: wit::PolicyInfo) -> rules::PolicyInfo {
    rules::PolicyInfo {
        name: i.name,
        version: i.version,
        contract: i.contract,
    }
}
