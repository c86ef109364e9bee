//! The decision rules. Each function is total: any input gets a decision.

use serde::Deserialize;

use crate::{
    ClaimMap, IdpClaims, LoginDecision, LoginInput, LoginOutcome, NewUser, ProvisioningMode,
    Refusal, Resolution, ResolveDecision, ResolveInput, Role, RoleDecision, RoleInput, RoleSource,
    UserCandidate, UserMatch, UserResolution, UserStatus,
};

/// The default policy's settings: tenant-wide defaults for claims that an identity
/// provider does not override. JSON object; every key optional; unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Claim carrying the user (default `email`).
    pub default_user_claim: Option<String>,
    /// Claim carrying a virtual account's name (default: none, so no VA matches).
    pub default_va_name_claim: Option<String>,
    /// Claim carrying team values (default: none).
    pub default_team_claim: Option<String>,
}

impl Settings {
    /// Parses settings text; empty text means "no settings".
    pub fn parse(text: &str) -> Result<Settings, String> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        // Parse to a map first: a derived struct also accepts a JSON array of its fields
        // (`[null, null, null]`), which is not a settings document anyone means to write.
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| format!("settings are invalid: {e}; use a JSON object"))?;
        let settings = Settings::deserialize(serde_json::Value::Object(object))
            .map_err(|e| format!("settings are invalid: {e}"))?;
        for (key, value) in [
            ("default_user_claim", &settings.default_user_claim),
            ("default_va_name_claim", &settings.default_va_name_claim),
            ("default_team_claim", &settings.default_team_claim),
        ] {
            if let Some(path) = value {
                check_claim_path(path).map_err(|why| format!("settings.{key}: {why}"))?;
            }
        }
        Ok(settings)
    }
}

/// A claim path is a claim name, or dot-separated names into nested objects
/// (`realm_access.roles`). At most 256 characters, no whitespace or control characters,
/// no empty segment.
pub fn check_claim_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 256 {
        return Err(format!(
            "claim path {path:?} is invalid: use 1-256 characters"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "claim path {path:?} is invalid: whitespace and control characters are not allowed"
        ));
    }
    if path.split('.').any(str::is_empty) {
        return Err(format!(
            "claim path {path:?} is invalid: use names separated by single dots, e.g. realm_access.roles"
        ));
    }
    Ok(())
}

/// Accepts or refuses the default policy's settings.
pub fn validate_settings(text: &str) -> Result<(), String> {
    Settings::parse(text).map(|_| ())
}

/// The outcome of an SSO login (SPEC §2).
///
/// An existing user decides first: `deactivated` is refused in every mode (a login never
/// reactivates), `invited` becomes `active`, `active` is let in. An unknown email is created
/// only in `jit` mode, and only when the tenant has an SSO configuration.
pub fn login(input: &LoginInput) -> LoginDecision {
    let mut trace = Vec::new();
    let outcome = login_outcome(input, &mut trace);
    LoginDecision { outcome, trace }
}

fn login_outcome(input: &LoginInput, trace: &mut Vec<String>) -> LoginOutcome {
    if let Some(user) = &input.user {
        trace.push(format!(
            "user {} exists with status {}",
            user.id,
            user.status.as_str()
        ));
        return match user.status {
            UserStatus::Deactivated => {
                trace.push("deactivated users are refused in every mode".into());
                LoginOutcome::Refuse(Refusal::new(
                    "deactivated",
                    "your account is deactivated; ask a tenant admin to reactivate it",
                ))
            }
            UserStatus::Invited => {
                trace.push("an invited user becomes active on first login".into());
                LoginOutcome::Activate(user.id.clone())
            }
            UserStatus::Active => {
                trace.push("active user is let in".into());
                LoginOutcome::Allow(user.id.clone())
            }
        };
    }
    trace.push(format!(
        "no user has this email; mode is {}",
        input.mode.as_str()
    ));
    match input.mode {
        ProvisioningMode::Jit if !input.sso_configured => {
            trace.push("jit needs an SSO configuration".into());
            LoginOutcome::Refuse(Refusal::new(
                "sso_not_configured",
                "just-in-time sign-up needs an SSO configuration; ask a tenant admin to set one up",
            ))
        }
        ProvisioningMode::Jit => {
            let email = input.claims.email.trim();
            if !looks_like_email(email) {
                trace.push("the login carries no usable email".into());
                return LoginOutcome::Refuse(Refusal::new(
                    "missing_email",
                    "your identity provider sent no usable email address; ask your admin to release the email claim",
                ));
            }
            trace.push("jit creates the user on first valid login".into());
            let claims = &input.claims;
            LoginOutcome::Create(NewUser {
                email: email.to_owned(),
                display_name: non_empty(&claims.name).or_else(|| {
                    let joined = [&claims.given_name, &claims.family_name]
                        .into_iter()
                        .filter_map(non_empty)
                        .collect::<Vec<_>>()
                        .join(" ");
                    (!joined.is_empty()).then_some(joined)
                }),
                given_name: non_empty(&claims.given_name),
                family_name: non_empty(&claims.family_name),
            })
        }
        ProvisioningMode::Scim => {
            trace.push(
                "scim mode: users are created only by the identity provider's SCIM push".into(),
            );
            LoginOutcome::Refuse(Refusal::new(
                "not_provisioned",
                "you have no account here yet; accounts are provisioned by your identity provider, so ask your admin to assign you to this application",
            ))
        }
        ProvisioningMode::InviteOnly => {
            trace.push("invite-only mode: users are created only by an admin's invitation".into());
            LoginOutcome::Refuse(Refusal::new(
                "not_provisioned",
                "you have no account here yet; ask a tenant admin to invite you",
            ))
        }
    }
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn looks_like_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// Which identity a verified external token is (SPEC §4).
///
/// A virtual account whose mapping matched the VA-name claim wins over everything. Then a
/// user matched by its own mapping, then one matched by email; the user must be `active`.
/// The user's team context is its own teams plus the teams whose mapping matched a value of
/// the team claim (sorted, without duplicates). Nothing matched: `not_provisioned`, because
/// an identity provider never creates users.
pub fn resolve(input: &ResolveInput) -> ResolveDecision {
    let mut trace = Vec::new();
    let outcome = resolve_outcome(input, &mut trace);
    ResolveDecision { outcome, trace }
}

fn resolve_outcome(input: &ResolveInput, trace: &mut Vec<String>) -> Resolution {
    match input.virtual_accounts.as_slice() {
        [] => {}
        [va] => {
            trace.push(format!(
                "virtual account {} matches the VA-name claim; it takes precedence",
                va.name
            ));
            if !va.enabled {
                trace.push("the virtual account is disabled".into());
                return Resolution::Refuse(Refusal::new(
                    "deactivated",
                    format!("virtual account {} is disabled", va.name),
                ));
            }
            return Resolution::VirtualAccount(va.id.clone());
        }
        several => {
            trace.push(format!(
                "{} virtual accounts match the VA-name claim",
                several.len()
            ));
            return Resolution::Refuse(Refusal::new(
                "ambiguous_identity",
                format!(
                    "{} virtual accounts are mapped to this token's VA name on identity provider {}; keep one mapping",
                    several.len(),
                    input.idp
                ),
            ));
        }
    }
    let Some(user) = pick_user(&input.users, trace) else {
        return Resolution::Refuse(match &input.user_claim {
            _ if input.users.len() > 1 => Refusal::new(
                "ambiguous_identity",
                "several users match this token's user claim; keep one mapping",
            ),
            Some(_) => {
                trace.push(
                    "no virtual account or user matches; identity providers never create users"
                        .into(),
                );
                Refusal::new(
                    "not_provisioned",
                    "no user or virtual account of this tenant matches this token",
                )
            }
            None => {
                trace.push("the token has no user claim and no virtual account matches".into());
                Refusal::new(
                    "not_provisioned",
                    "the token carries no user claim and matches no virtual account",
                )
            }
        });
    };
    match user.status {
        UserStatus::Deactivated => {
            trace.push(format!("user {} is deactivated", user.id));
            Resolution::Refuse(Refusal::new("deactivated", "the user is deactivated"))
        }
        UserStatus::Invited => {
            trace.push(format!(
                "user {} is invited and has not logged in yet",
                user.id
            ));
            Resolution::Refuse(Refusal::new(
                "not_provisioned",
                "the user has been invited but has not logged in yet",
            ))
        }
        UserStatus::Active => {
            let mut teams: Vec<String> = user
                .teams
                .iter()
                .chain(input.teams.iter().map(|t| &t.id))
                .cloned()
                .collect();
            teams.sort();
            teams.dedup();
            if !input.teams.is_empty() {
                trace.push(format!(
                    "team context from the team claim: {}",
                    input
                        .teams
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Resolution::User(UserResolution {
                id: user.id.clone(),
                teams,
            })
        }
    }
}

fn kind_name(kind: UserMatch) -> &'static str {
    match kind {
        UserMatch::Mapping => "its own mapping",
        UserMatch::Email => "email",
    }
}

/// A user matched by its own mapping wins over one matched by email; two of the same kind
/// are ambiguous (None, with the trace saying so).
fn pick_user<'a>(users: &'a [UserCandidate], trace: &mut Vec<String>) -> Option<&'a UserCandidate> {
    for kind in [UserMatch::Mapping, UserMatch::Email] {
        let mut matching = users.iter().filter(|u| u.matched_by == kind);
        if let Some(first) = matching.next() {
            if matching.next().is_some() {
                trace.push(format!("several users match by {}", kind_name(kind)));
                return None;
            }
            trace.push(format!(
                "user {} matches the user claim by {}",
                first.id,
                kind_name(kind)
            ));
            return Some(first);
        }
    }
    None
}

/// Effective role and its source for each input (SPEC §5): a manual role always wins;
/// otherwise the highest role of the user's teams (`group`); otherwise `member` (`initial`).
pub fn effective_role(inputs: &[RoleInput]) -> Vec<RoleDecision> {
    inputs.iter().map(effective_role_of).collect()
}

fn effective_role_of(input: &RoleInput) -> RoleDecision {
    if let Some(role) = input.manual {
        return RoleDecision {
            role,
            source: RoleSource::Manual,
        };
    }
    match input.team_roles.iter().max() {
        Some(&role) => RoleDecision {
            role,
            source: RoleSource::Group,
        },
        None => RoleDecision {
            role: Role::Member,
            source: RoleSource::Initial,
        },
    }
}

/// The rules [`effective_role`] applies to `input`, in order, for explanations.
pub fn explain_role(input: &RoleInput) -> Vec<String> {
    let decision = effective_role_of(input);
    let role = role_name(decision.role);
    let mut team_roles: Vec<&str> = input.team_roles.iter().map(|r| role_name(*r)).collect();
    team_roles.sort_unstable();
    match (input.manual, decision.source) {
        (Some(_), _) => {
            let mut trace = vec![format!(
                "role {role} from the manual role an admin set; a manual role always wins"
            )];
            if !team_roles.is_empty() {
                trace.push(format!("team roles ignored: {}", team_roles.join(", ")));
            }
            trace
        }
        (None, RoleSource::Group) => vec![
            "no manual role".into(),
            format!(
                "role {role} from a team: the highest role of the user's teams ({})",
                team_roles.join(", ")
            ),
        ],
        (None, _) => vec![
            "no manual role".into(),
            format!("no team with a role: the initial role, {role}"),
        ],
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

/// The longest team name (`^[A-Za-z0-9_-]{1,36}$`).
pub const TEAM_NAME_MAX: usize = 36;

/// Whether `name` follows the team-name rule, `^[A-Za-z0-9_-]{1,36}$`.
pub fn is_team_name(name: &str) -> bool {
    (1..=TEAM_NAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The default rule for the team name of a directory group (SPEC §7): runs of characters
/// outside `A-Z a-z 0-9 _ -` become one `-`, leading and trailing `-` are trimmed, the
/// result is cut to 36 characters and trimmed again; nothing left gives `team`.
/// `Engineering (EU)` → `Engineering-EU`, `Ingeniería` → `Ingenier-a`.
pub fn team_name(display_name: &str) -> String {
    let mut name = String::with_capacity(display_name.len().min(64));
    let mut in_run = false;
    for c in display_name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            name.push(c);
            in_run = false;
        } else if !in_run {
            name.push('-');
            in_run = true;
        }
    }
    let cut: String = name.trim_matches('-').chars().take(TEAM_NAME_MAX).collect();
    let cut = cut.trim_end_matches('-');
    if cut.is_empty() {
        "team".to_owned()
    } else {
        cut.to_owned()
    }
}

/// Which claims carry user, VA name and teams: the identity provider's overrides, else the
/// tenant's default settings, else `email` for the user and nothing for the others.
pub fn claim_mapping(idp: &IdpClaims, settings: &str) -> ClaimMap {
    // Settings were validated when they were stored; unreadable ones fall back to defaults.
    let settings = Settings::parse(settings).unwrap_or_default();
    ClaimMap {
        user_claim: idp
            .user_claim
            .clone()
            .or(settings.default_user_claim)
            .unwrap_or_else(|| "email".to_owned()),
        va_name_claim: idp.va_name_claim.clone().or(settings.default_va_name_claim),
        team_claim: idp.team_claim.clone().or(settings.default_team_claim),
        extra_claims: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_names_follow_the_default_rule() {
        for (display, name) in [
            ("Data Science", "Data-Science"),
            ("Engineering (EU)", "Engineering-EU"),
            ("Ingeniería", "Ingenier-a"),
            ("Data/Science", "Data-Science"),
            ("  spaced  out  ", "spaced-out"),
            ("already_fine-1", "already_fine-1"),
            ("--dashes--", "dashes"),
            ("日本語", "team"),
            ("", "team"),
        ] {
            assert_eq!(team_name(display), name, "{display:?}");
            assert!(is_team_name(&team_name(display)));
        }
        let long = "A very long directory group name that goes on (and on)";
        let name = team_name(long);
        assert_eq!(name, "A-very-long-directory-group-name-tha");
        assert_eq!(name.len(), 36);
        // A cut that lands on a separator is trimmed again.
        assert_eq!(team_name(&format!("{} x", "a".repeat(35))), "a".repeat(35));
    }
    use crate::{ExistingUser, LoginClaims, TeamCandidate, UserSource, VaCandidate};
    use rstest::rstest;

    use ProvisioningMode::{InviteOnly, Jit, Scim};

    // ------------------------------------------------------------ explain-role

    #[rstest]
    #[case(Some(Role::Member), vec![Role::Admin], "role member from the manual role")]
    #[case(None, vec![Role::Member, Role::Admin], "role admin from a team: the highest role of the user's teams (admin, member)")]
    #[case(None, vec![], "no team with a role: the initial role, member")]
    fn explain_role_says_which_rule_decided(
        #[case] manual: Option<Role>,
        #[case] team_roles: Vec<Role>,
        #[case] says: &str,
    ) {
        let input = RoleInput { manual, team_roles };
        let trace = explain_role(&input);
        assert!(
            trace
                .iter()
                .any(|line| line.starts_with(says) || line.ends_with(says)),
            "{trace:?}"
        );
        // The trace names the role the decision gives.
        let decided = role_name(effective_role(std::slice::from_ref(&input))[0].role);
        assert!(
            trace
                .iter()
                .any(|line| line.contains(&format!("role {decided}")) || line.ends_with(decided)),
            "{trace:?}"
        );
    }

    // ------------------------------------------------------------------ login

    fn login_input(mode: ProvisioningMode, user: Option<UserStatus>) -> LoginInput {
        LoginInput {
            mode,
            sso_configured: true,
            claims: LoginClaims {
                email: "ann@example.com".into(),
                subject: "sub-ann".into(),
                ..LoginClaims::default()
            },
            user: user.map(|status| ExistingUser {
                id: "u1".into(),
                status,
                source: UserSource::Invite,
            }),
            settings: String::new(),
        }
    }

    fn code(outcome: &LoginOutcome) -> Option<&str> {
        match outcome {
            LoginOutcome::Refuse(refusal) => Some(&refusal.code),
            _ => None,
        }
    }

    /// SPEC §2: every mode against every state of the user that carries the email.
    #[rstest]
    #[case::scim_no_user(Scim, None, Err("not_provisioned"))]
    #[case::jit_no_user(Jit, None, Ok("create"))]
    #[case::invite_only_no_user(InviteOnly, None, Err("not_provisioned"))]
    #[case::scim_invited(Scim, Some(UserStatus::Invited), Ok("activate"))]
    #[case::jit_invited(Jit, Some(UserStatus::Invited), Ok("activate"))]
    #[case::invite_only_invited(InviteOnly, Some(UserStatus::Invited), Ok("activate"))]
    #[case::scim_active(Scim, Some(UserStatus::Active), Ok("allow"))]
    #[case::jit_active(Jit, Some(UserStatus::Active), Ok("allow"))]
    #[case::invite_only_active(InviteOnly, Some(UserStatus::Active), Ok("allow"))]
    #[case::scim_deactivated(Scim, Some(UserStatus::Deactivated), Err("deactivated"))]
    #[case::jit_deactivated(Jit, Some(UserStatus::Deactivated), Err("deactivated"))]
    #[case::invite_only_deactivated(InviteOnly, Some(UserStatus::Deactivated), Err("deactivated"))]
    fn login_by_mode_and_user_state(
        #[case] mode: ProvisioningMode,
        #[case] user: Option<UserStatus>,
        #[case] expected: Result<&str, &str>,
    ) {
        let decision = login(&login_input(mode, user));
        let actual = match &decision.outcome {
            LoginOutcome::Create(new) => {
                assert_eq!(new.email, "ann@example.com");
                Ok("create")
            }
            LoginOutcome::Activate(id) => {
                assert_eq!(id, "u1");
                Ok("activate")
            }
            LoginOutcome::Allow(id) => {
                assert_eq!(id, "u1");
                Ok("allow")
            }
            LoginOutcome::Refuse(refusal) => Err(refusal.code.as_str()),
        };
        assert_eq!(actual, expected, "{decision:?}");
        assert!(!decision.trace.is_empty(), "every decision explains itself");
    }

    #[test]
    fn jit_without_sso_configuration_refuses_unknown_emails() {
        let mut input = login_input(Jit, None);
        input.sso_configured = false;
        assert_eq!(code(&login(&input).outcome), Some("sso_not_configured"));
    }

    #[test]
    fn jit_without_sso_configuration_still_lets_existing_users_in() {
        let mut input = login_input(Jit, Some(UserStatus::Active));
        input.sso_configured = false;
        assert_eq!(login(&input).outcome, LoginOutcome::Allow("u1".into()));
    }

    #[rstest]
    #[case::empty("")]
    #[case::blank("   ")]
    #[case::no_at("ann.example.com")]
    #[case::no_local_part("@example.com")]
    #[case::no_domain("ann@")]
    #[case::two_ats("ann@b@example.com")]
    #[case::inner_space("ann smith@example.com")]
    fn jit_refuses_a_login_without_a_usable_email(#[case] email: &str) {
        let mut input = login_input(Jit, None);
        input.claims.email = email.into();
        assert_eq!(code(&login(&input).outcome), Some("missing_email"));
    }

    #[rstest]
    #[case::name_wins(Some("Ann Smith"), Some("A"), Some("S"), Some("Ann Smith"))]
    #[case::joined_names(None, Some("Ann"), Some("Smith"), Some("Ann Smith"))]
    #[case::given_only(None, Some("Ann"), None, Some("Ann"))]
    #[case::blank_name_falls_back(Some("  "), None, Some("Smith"), Some("Smith"))]
    #[case::nothing(None, None, None, None)]
    fn jit_display_name(
        #[case] name: Option<&str>,
        #[case] given: Option<&str>,
        #[case] family: Option<&str>,
        #[case] expected: Option<&str>,
    ) {
        let mut input = login_input(Jit, None);
        input.claims.name = name.map(Into::into);
        input.claims.given_name = given.map(Into::into);
        input.claims.family_name = family.map(Into::into);
        let LoginOutcome::Create(new) = login(&input).outcome else {
            panic!("jit creates the user");
        };
        assert_eq!(new.display_name.as_deref(), expected);
    }

    #[test]
    fn jit_trims_the_email_it_creates() {
        let mut input = login_input(Jit, None);
        input.claims.email = "  ann@example.com ".into();
        let LoginOutcome::Create(new) = login(&input).outcome else {
            panic!("jit creates the user");
        };
        assert_eq!(new.email, "ann@example.com");
    }

    // ---------------------------------------------------------------- resolve

    fn va(id: &str, enabled: bool) -> VaCandidate {
        VaCandidate {
            id: id.into(),
            name: format!("{id}-name"),
            enabled,
        }
    }

    fn user(id: &str, status: UserStatus, matched_by: UserMatch, teams: &[&str]) -> UserCandidate {
        UserCandidate {
            id: id.into(),
            email: format!("{id}@example.com"),
            status,
            matched_by,
            teams: teams.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn team(id: &str, matched: &str) -> TeamCandidate {
        TeamCandidate {
            id: id.into(),
            name: format!("{id}-name"),
            matched: matched.into(),
        }
    }

    fn resolve_input(vas: Vec<VaCandidate>, users: Vec<UserCandidate>) -> ResolveInput {
        ResolveInput {
            idp: "okta".into(),
            user_claim: Some("ann@example.com".into()),
            virtual_accounts: vas,
            users,
            ..ResolveInput::default()
        }
    }

    fn refusal_code(resolution: &Resolution) -> Option<&str> {
        match resolution {
            Resolution::Refuse(refusal) => Some(&refusal.code),
            _ => None,
        }
    }

    fn resolved_user(id: &str, teams: &[&str]) -> Resolution {
        Resolution::User(UserResolution {
            id: id.into(),
            teams: teams.iter().map(|t| t.to_string()).collect(),
        })
    }

    #[test]
    fn a_virtual_account_wins_over_a_matching_user() {
        let input = resolve_input(
            vec![va("va1", true)],
            vec![user("u1", UserStatus::Active, UserMatch::Mapping, &[])],
        );
        assert_eq!(
            resolve(&input).outcome,
            Resolution::VirtualAccount("va1".into())
        );
    }

    #[test]
    fn a_disabled_virtual_account_is_refused_without_falling_back_to_the_user() {
        let input = resolve_input(
            vec![va("va1", false)],
            vec![user("u1", UserStatus::Active, UserMatch::Email, &[])],
        );
        assert_eq!(refusal_code(&resolve(&input).outcome), Some("deactivated"));
    }

    #[test]
    fn two_virtual_accounts_are_ambiguous() {
        let input = resolve_input(vec![va("va1", true), va("va2", true)], vec![]);
        let decision = resolve(&input);
        assert_eq!(refusal_code(&decision.outcome), Some("ambiguous_identity"));
    }

    #[rstest]
    #[case::mapping_first(UserMatch::Mapping, UserMatch::Email)]
    #[case::email_first(UserMatch::Email, UserMatch::Mapping)]
    fn a_mapping_beats_an_email_whatever_the_order(#[case] a: UserMatch, #[case] b: UserMatch) {
        let input = resolve_input(
            vec![],
            vec![
                user("a", UserStatus::Active, a, &[]),
                user("b", UserStatus::Active, b, &[]),
            ],
        );
        let winner = if a == UserMatch::Mapping { "a" } else { "b" };
        assert_eq!(resolve(&input).outcome, resolved_user(winner, &[]));
    }

    #[rstest]
    #[case::two_mappings(UserMatch::Mapping)]
    #[case::two_emails(UserMatch::Email)]
    fn two_users_matched_the_same_way_are_ambiguous(#[case] how: UserMatch) {
        let input = resolve_input(
            vec![],
            vec![
                user("a", UserStatus::Active, how, &[]),
                user("b", UserStatus::Active, how, &[]),
            ],
        );
        assert_eq!(
            refusal_code(&resolve(&input).outcome),
            Some("ambiguous_identity")
        );
    }

    #[rstest]
    #[case::invited(UserStatus::Invited, "not_provisioned")]
    #[case::deactivated(UserStatus::Deactivated, "deactivated")]
    fn users_that_are_not_active_are_refused(#[case] status: UserStatus, #[case] code: &str) {
        let input = resolve_input(vec![], vec![user("u1", status, UserMatch::Email, &["t1"])]);
        assert_eq!(refusal_code(&resolve(&input).outcome), Some(code));
    }

    #[rstest]
    #[case::own_teams_only(&["t2", "t1"], &[], &["t1", "t2"])]
    #[case::claim_teams_only(&[], &[("t3", "eng")], &["t3"])]
    #[case::union_sorted(&["t2"], &[("t1", "eng"), ("t3", "ops")], &["t1", "t2", "t3"])]
    #[case::duplicates_removed(&["t1", "t2"], &[("t2", "eng"), ("t1", "ops")], &["t1", "t2"])]
    #[case::none(&[], &[], &[])]
    fn team_context_is_own_teams_and_claim_matched_teams(
        #[case] own: &[&str],
        #[case] matched: &[(&str, &str)],
        #[case] expected: &[&str],
    ) {
        let mut input = resolve_input(
            vec![],
            vec![user("u1", UserStatus::Active, UserMatch::Email, own)],
        );
        input.teams = matched.iter().map(|(id, value)| team(id, value)).collect();
        assert_eq!(resolve(&input).outcome, resolved_user("u1", expected));
    }

    #[rstest]
    #[case::with_user_claim(Some("nobody@example.com"))]
    #[case::without_user_claim(None)]
    fn nothing_matching_is_not_provisioned(#[case] user_claim: Option<&str>) {
        let mut input = resolve_input(vec![], vec![]);
        input.user_claim = user_claim.map(Into::into);
        input.teams = vec![team("t1", "eng")];
        assert_eq!(
            refusal_code(&resolve(&input).outcome),
            Some("not_provisioned")
        );
    }

    // ------------------------------------------------------------------ roles

    use Role::{Admin, Member};

    #[rstest]
    #[case::manual_member_beats_admin_team(Some(Member), &[Admin], Member, RoleSource::Manual)]
    #[case::manual_admin_without_teams(Some(Admin), &[], Admin, RoleSource::Manual)]
    #[case::highest_team_role(None, &[Member, Admin, Member], Admin, RoleSource::Group)]
    #[case::member_teams(None, &[Member], Member, RoleSource::Group)]
    #[case::initial_member(None, &[], Member, RoleSource::Initial)]
    fn role_precedence(
        #[case] manual: Option<Role>,
        #[case] team_roles: &[Role],
        #[case] role: Role,
        #[case] source: RoleSource,
    ) {
        let input = RoleInput {
            manual,
            team_roles: team_roles.to_vec(),
        };
        assert_eq!(
            effective_role(&[input]),
            vec![RoleDecision { role, source }]
        );
    }

    #[test]
    fn a_batch_keeps_its_order() {
        let inputs = [
            RoleInput {
                manual: None,
                team_roles: vec![Admin],
            },
            RoleInput::default(),
            RoleInput {
                manual: Some(Member),
                team_roles: vec![Admin],
            },
        ];
        let sources: Vec<_> = effective_role(&inputs)
            .iter()
            .map(|d| (d.role, d.source))
            .collect();
        assert_eq!(
            sources,
            [
                (Admin, RoleSource::Group),
                (Member, RoleSource::Initial),
                (Member, RoleSource::Manual)
            ]
        );
        assert!(effective_role(&[]).is_empty());
    }

    // ---------------------------------------------------------- claim mapping

    fn idp(user: Option<&str>, va: Option<&str>, team: Option<&str>) -> IdpClaims {
        IdpClaims {
            user_claim: user.map(Into::into),
            va_name_claim: va.map(Into::into),
            team_claim: team.map(Into::into),
        }
    }

    #[rstest]
    #[case::built_in_defaults(idp(None, None, None), "", ("email", None, None))]
    #[case::empty_object(idp(None, None, None), "{}", ("email", None, None))]
    #[case::settings_defaults(
        idp(None, None, None),
        r#"{"default_user_claim": "upn", "default_va_name_claim": "azp", "default_team_claim": "groups"}"#,
        ("upn", Some("azp"), Some("groups"))
    )]
    #[case::idp_overrides_settings(
        idp(Some("preferred_username"), Some("client_id"), Some("realm_access.roles")),
        r#"{"default_user_claim": "upn", "default_va_name_claim": "azp", "default_team_claim": "groups"}"#,
        ("preferred_username", Some("client_id"), Some("realm_access.roles"))
    )]
    #[case::mixed(idp(None, None, Some("roles")), r#"{"default_user_claim": "upn"}"#, ("upn", None, Some("roles")))]
    #[case::unreadable_settings_fall_back(idp(None, None, None), "{not json", ("email", None, None))]
    fn claim_mapping_precedence(
        #[case] idp: IdpClaims,
        #[case] settings: &str,
        #[case] expected: (&str, Option<&str>, Option<&str>),
    ) {
        let map = claim_mapping(&idp, settings);
        assert_eq!(
            (
                map.user_claim.as_str(),
                map.va_name_claim.as_deref(),
                map.team_claim.as_deref()
            ),
            expected
        );
        assert!(map.extra_claims.is_empty());
    }

    // --------------------------------------------------------------- settings

    #[rstest]
    #[case::empty("")]
    #[case::blank(" \n")]
    #[case::empty_object("{}")]
    #[case::nulls(r#"{"default_team_claim": null}"#)]
    #[case::all_keys(
        r#"{"default_user_claim": "email", "default_va_name_claim": "azp", "default_team_claim": "realm_access.roles"}"#
    )]
    fn valid_settings(#[case] text: &str) {
        assert_eq!(validate_settings(text), Ok(()));
    }

    #[rstest]
    #[case::unknown_key(r#"{"team_claim": "groups"}"#, "unknown field `team_claim`")]
    #[case::not_json("{", "settings are invalid")]
    #[case::array("[null, null, null]", "use a JSON object")]
    #[case::string(r#""groups""#, "use a JSON object")]
    #[case::wrong_type(r#"{"default_team_claim": 3}"#, "settings are invalid")]
    #[case::empty_path(r#"{"default_team_claim": ""}"#, "settings.default_team_claim")]
    #[case::double_dot(r#"{"default_team_claim": "realm_access..roles"}"#, "single dots")]
    #[case::trailing_dot(r#"{"default_user_claim": "email."}"#, "settings.default_user_claim")]
    #[case::whitespace(r#"{"default_va_name_claim": "client id"}"#, "whitespace")]
    fn invalid_settings_say_what_is_wrong(#[case] text: &str, #[case] needle: &str) {
        let message = validate_settings(text).expect_err("refused");
        assert!(
            message.contains(needle),
            "{message:?} should contain {needle:?}"
        );
        assert!(
            message.starts_with("settings"),
            "says what was wrong first: {message}"
        );
    }

    #[rstest]
    #[case::simple("email", true)]
    #[case::nested("realm_access.roles", true)]
    #[case::max_len(&"a".repeat(256), true)]
    #[case::too_long(&"a".repeat(257), false)]
    #[case::empty("", false)]
    #[case::leading_dot(".roles", false)]
    #[case::tab("a\tb", false)]
    fn claim_paths(#[case] path: &str, #[case] ok: bool) {
        assert_eq!(check_claim_path(path).is_ok(), ok, "{path:?}");
    }
}
