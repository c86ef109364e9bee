//! Shape checks on a policy's answers. The policy decides; these only make sure the answer
//! is one the host can carry out: well-formed codes, and identities taken from the
//! candidates the host offered (a policy cannot invent a user or a team).

use super::PolicyError;
use gatehouse_rules as rules;

const MAX_TRACE_LINES: usize = 32;
const MAX_TRACE_LINE: usize = 256;
const MAX_MESSAGE: usize = 1024;

fn check_refusal(r: &rules::Refusal) -> Result<(), PolicyError> {
    let code_ok = r.code.len() <= 64
        && r.code.starts_with(|c: char| c.is_ascii_lowercase())
        && r.code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !code_ok {
        return Err(PolicyError::Malformed(format!(
            "refusal code {:?} is invalid: use 1-64 of a-z 0-9 _ starting with a letter",
            truncate(&r.code, 80)
        )));
    }
    if r.message.len() > MAX_MESSAGE {
        return Err(PolicyError::Malformed(format!(
            "refusal message is {} bytes; the limit is {MAX_MESSAGE}",
            r.message.len()
        )));
    }
    Ok(())
}

pub(super) fn check_login(
    input: &rules::LoginInput,
    d: &rules::LoginDecision,
) -> Result<(), PolicyError> {
    let existing = input.user.as_ref().map(|u| u.id.as_str());
    match &d.outcome {
        rules::LoginOutcome::Create(new) => {
            if let Some(id) = existing {
                return Err(PolicyError::Malformed(format!(
                    "login answered create, but user {id} already exists"
                )));
            }
            if new.email.trim().is_empty() {
                return Err(PolicyError::Malformed(
                    "login answered create without an email".into(),
                ));
            }
            Ok(())
        }
        rules::LoginOutcome::Activate(id) | rules::LoginOutcome::Allow(id) => match existing {
            Some(existing) if existing == id => Ok(()),
            _ => Err(PolicyError::Malformed(format!(
                "login named user {:?}, which is not the login's user",
                truncate(id, 80)
            ))),
        },
        rules::LoginOutcome::Refuse(r) => check_refusal(r),
    }
}

pub(super) fn check_resolve(
    input: &rules::ResolveInput,
    d: &rules::ResolveDecision,
) -> Result<(), PolicyError> {
    match &d.outcome {
        rules::Resolution::VirtualAccount(id) => {
            if input.virtual_accounts.iter().any(|va| &va.id == id) {
                Ok(())
            } else {
                Err(PolicyError::Malformed(format!(
                    "resolve named virtual account {:?}, which was not a candidate",
                    truncate(id, 80)
                )))
            }
        }
        rules::Resolution::User(user) => {
            let Some(candidate) = input.users.iter().find(|u| u.id == user.id) else {
                return Err(PolicyError::Malformed(format!(
                    "resolve named user {:?}, which was not a candidate",
                    truncate(&user.id, 80)
                )));
            };
            let offered = |team: &String| {
                candidate.teams.contains(team) || input.teams.iter().any(|t| &t.id == team)
            };
            match user.teams.iter().find(|team| !offered(team)) {
                Some(team) => Err(PolicyError::Malformed(format!(
                    "resolve gave team {:?}, which is neither the user's nor a candidate",
                    truncate(team, 80)
                ))),
                None => Ok(()),
            }
        }
        rules::Resolution::Refuse(r) => check_refusal(r),
    }
}

pub(super) fn check_claim_map(map: &rules::ClaimMap) -> Result<(), PolicyError> {
    let paths = std::iter::once(&map.user_claim)
        .chain(map.va_name_claim.iter())
        .chain(map.team_claim.iter())
        .chain(map.extra_claims.iter());
    for path in paths {
        rules::check_claim_path(path)
            .map_err(|why| PolicyError::Malformed(format!("claim-mapping: {why}")))?;
    }
    if map.extra_claims.len() > 16 {
        return Err(PolicyError::Malformed(
            "claim-mapping asked for more than 16 extra claims".into(),
        ));
    }
    Ok(())
}

/// Traces are for people: keep them short rather than refuse a decision over them.
fn trim_trace(trace: Vec<String>) -> Vec<String> {
    trace
        .into_iter()
        .take(MAX_TRACE_LINES)
        .map(|line| truncate(&line, MAX_TRACE_LINE).to_owned())
        .collect()
}

pub(super) fn trimmed_trace(trace: Vec<String>) -> Vec<String> {
    trim_trace(trace)
}

pub(super) fn trimmed_login(mut d: rules::LoginDecision) -> rules::LoginDecision {
    d.trace = trim_trace(d.trace);
    d
}

pub(super) fn trimmed_resolve(mut d: rules::ResolveDecision) -> rules::ResolveDecision {
    d.trace = trim_trace(d.trace);
    d
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
