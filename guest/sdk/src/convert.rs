//! WIT binding values <-> `gatehouse_rules` values, both ways.
//!
//! The two sets of types mirror each other field for field; these conversions are the
//! only code that knows both. Both directions exist so that native tests can drive a
//! policy through the very conversions the component uses (`PolicyEvaluator`).

use crate::rules as r;
use crate::wit as w;

/// Converts a value to its counterpart on the other side of the edge.
///
/// A private trait rather than `From`, so one generic rule covers `Option` and `Vec` of
/// anything convertible and the fields of every record convert with the same call.
pub(crate) trait Wire<T> {
    fn wire(self) -> T;
}

impl Wire<String> for String {
    fn wire(self) -> String {
        self
    }
}

impl Wire<bool> for bool {
    fn wire(self) -> bool {
        self
    }
}

impl<A: Wire<B>, B> Wire<Option<B>> for Option<A> {
    fn wire(self) -> Option<B> {
        self.map(Wire::wire)
    }
}

impl<A: Wire<B>, B> Wire<Vec<B>> for Vec<A> {
    fn wire(self) -> Vec<B> {
        self.into_iter().map(Wire::wire).collect()
    }
}

/// Rules-side inputs are borrowed by `Policy`, and cloning a slice is the one copy a
/// native caller makes anyway.
impl<A: Wire<B> + Clone, B> Wire<Vec<B>> for &[A] {
    fn wire(self) -> Vec<B> {
        self.iter().cloned().map(Wire::wire).collect()
    }
}

/// Same-named cases of a WIT enum and its Rust mirror, both ways.
macro_rules! enums {
    ($($name:ident { $($case:ident),+ $(,)? })+) => {$(
        impl Wire<r::$name> for w::$name {
            fn wire(self) -> r::$name {
                match self { $(w::$name::$case => r::$name::$case),+ }
            }
        }
        impl Wire<w::$name> for r::$name {
            fn wire(self) -> w::$name {
                match self { $(r::$name::$case => w::$name::$case),+ }
            }
        }
    )+};
}

/// Same-named fields of a WIT record and its Rust mirror, both ways.
macro_rules! records {
    ($($name:ident { $($field:ident),+ $(,)? })+) => {$(
        impl Wire<r::$name> for w::$name {
            fn wire(self) -> r::$name {
                r::$name { $($field: self.$field.wire()),+ }
            }
        }
        impl Wire<w::$name> for r::$name {
            fn wire(self) -> w::$name {
                w::$name { $($field: self.$field.wire()),+ }
            }
        }
    )+};
}

enums! {
    ProvisioningMode { Scim, Jit, InviteOnly }
    UserStatus { Invited, Active, Deactivated }
    UserSource { Scim, Jit, Invite, Migration }
    Role { Admin, Member }
    RoleSource { Manual, Group, Initial }
    UserMatch { Mapping, Email }
}

records! {
    Refusal { code, message }
    PolicyInfo { name, version, contract }
    LoginClaims { email, subject, name, given_name, family_name }
    ExistingUser { id, status, source }
    LoginInput { mode, sso_configured, claims, user, settings }
    NewUser { email, display_name, given_name, family_name }
    LoginDecision { outcome, trace }
    Claim { path, values }
    VaCandidate { id, name, enabled }
    UserCandidate { id, email, status, matched_by, teams }
    TeamCandidate { id, name, matched }
    ResolveInput { idp, user_claim, va_name, team_values, extra, virtual_accounts, users, teams, settings }
    UserResolution { id, teams }
    ResolveDecision { outcome, trace }
    RoleInput { manual, team_roles }
    RoleDecision { role, source }
    IdpClaims { user_claim, va_name_claim, team_claim }
    ClaimMap { user_claim, va_name_claim, team_claim, extra_claims }
}

impl Wire<r::LoginOutcome> for w::LoginOutcome {
    fn wire(self) -> r::LoginOutcome {
        match self {
            w::LoginOutcome::Create(user) => r::LoginOutcome::Create(user.wire()),
            w::LoginOutcome::Activate(id) => r::LoginOutcome::Activate(id),
            w::LoginOutcome::Allow(id) => r::LoginOutcome::Allow(id),
            w::LoginOutcome::Refuse(refusal) => r::LoginOutcome::Refuse(refusal.wire()),
        }
    }
}

impl Wire<w::LoginOutcome> for r::LoginOutcome {
    fn wire(self) -> w::LoginOutcome {
        match self {
            r::LoginOutcome::Create(user) => w::LoginOutcome::Create(user.wire()),
            r::LoginOutcome::Activate(id) => w::LoginOutcome::Activate(id),
            r::LoginOutcome::Allow(id) => w::LoginOutcome::Allow(id),
            r::LoginOutcome::Refuse(refusal) => w::LoginOutcome::Refuse(refusal.wire()),
        }
    }
}

impl Wire<r::Resolution> for w::Resolution {
    fn wire(self) -> r::Resolution {
        match self {
            w::Resolution::VirtualAccount(id) => r::Resolution::VirtualAccount(id),
            w::Resolution::User(user) => r::Resolution::User(user.wire()),
            w::Resolution::Refuse(refusal) => r::Resolution::Refuse(refusal.wire()),
        }
    }
}

impl Wire<w::Resolution> for r::Resolution {
    fn wire(self) -> w::Resolution {
        match self {
            r::Resolution::VirtualAccount(id) => w::Resolution::VirtualAccount(id),
            r::Resolution::User(user) => w::Resolution::User(user.wire()),
            r::Resolution::Refuse(refusal) => w::Resolution::Refuse(refusal.wire()),
        }
    }
}
