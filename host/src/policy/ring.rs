//! The decision ring: a bounded, anonymised record of a tenant's recent decision inputs, kept
//! in memory so a candidate policy can be dry-run on real traffic before it is activated.
//!
//! Recorded where the host asks the policy (`TenantPolicy::login` and `TenantPolicy::resolve`:
//! edge resolutions that miss the memo, logins, and the evaluate endpoint). What is kept:
//! - login: provisioning mode, `sso_configured`, the existing user's id, status and source;
//!   the email and subject as pseudonyms; `name`, `given_name`, `family_name` are dropped;
//! - resolve: the identity provider's name, team-claim values, extra claims, virtual-account
//!   candidates, team candidates, user candidates' ids, statuses, match kind and teams; the
//!   user claim and every candidate's email as pseudonyms.
//!
//! A pseudonym is `anon-` and the first 16 hex digits of SHA-256(salt ‖ value), followed by
//! `@domain` when the value is an email (policies may decide by domain), with a salt
//! drawn at random per process: equal values stay equal within the ring (so a policy that
//! compares the user claim with a candidate's email decides the same), but a pseudonym cannot
//! be looked up in a dictionary and means nothing after a restart. Settings are not kept:
//! each side of a dry run brings its own. Nothing is written to disk.

use gatehouse_rules as rules;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One recorded decision input, anonymised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "decision", content = "input", rename_all = "snake_case")]
pub enum RecordedInput {
    Login(rules::LoginInput),
    Resolve(rules::ResolveInput),
}

/// A tenant's ring of recent decision inputs.
pub struct DecisionRing {
    capacity: usize,
    salt: [u8; 16],
    /// Shared with the shadow's queue: a decision's input is anonymised and allocated once.
    entries: Mutex<VecDeque<Arc<RecordedInput>>>,
}

impl DecisionRing {
    /// An empty ring that keeps the last `capacity` inputs (0: keeps nothing).
    pub fn new(capacity: usize) -> DecisionRing {
        DecisionRing {
            capacity,
            salt: rand::random(),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    pub(super) fn push(&self, input: Arc<RecordedInput>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // The same input twice would count twice in a dry run; keep the latest once.
        if let Some(at) = entries.iter().position(|e| **e == *input) {
            entries.remove(at);
        }
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(input);
    }

    fn pseudonym(&self, value: &str) -> String {
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(value.as_bytes())
            .finalize();
        let digest = &hex::encode(digest)[..16];
        match value.rsplit_once('@') {
            Some((_, domain)) => format!("anon-{digest}@{domain}"),
            None => format!("anon-{digest}"),
        }
    }

    /// Records a login input, anonymised.
    pub fn record_login(&self, input: &rules::LoginInput) {
        self.push(Arc::new(self.anonymise_login(input)));
    }

    /// A login input as the ring keeps it.
    pub fn anonymise_login(&self, input: &rules::LoginInput) -> RecordedInput {
        let mut input = input.clone();
        input.claims.email = self.pseudonym(&input.claims.email);
        input.claims.subject = self.pseudonym(&input.claims.subject);
        input.claims.name = None;
        input.claims.given_name = None;
        input.claims.family_name = None;
        input.settings = String::new();
        RecordedInput::Login(input)
    }

    /// Records a resolve input, anonymised.
    pub fn record_resolve(&self, input: &rules::ResolveInput) {
        self.push(Arc::new(self.anonymise_resolve(input)));
    }

    /// A resolve input as the ring keeps it.
    pub fn anonymise_resolve(&self, input: &rules::ResolveInput) -> RecordedInput {
        let mut input = input.clone();
        input.user_claim = input.user_claim.as_deref().map(|v| self.pseudonym(v));
        for user in &mut input.users {
            user.email = self.pseudonym(&user.email);
        }
        input.settings = String::new();
        RecordedInput::Resolve(input)
    }

    /// The recorded inputs, oldest first.
    pub fn snapshot(&self) -> Vec<RecordedInput> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().map(|e| RecordedInput::clone(e)).collect()
    }

    /// How many inputs the ring holds.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(email: &str) -> rules::ResolveInput {
        rules::ResolveInput {
            idp: "okta".into(),
            user_claim: Some(email.into()),
            users: vec![rules::UserCandidate {
                id: "u-1".into(),
                email: email.into(),
                status: rules::UserStatus::Active,
                matched_by: rules::UserMatch::Email,
                teams: vec![],
            }],
            settings: "{\"x\": 1}".into(),
            ..rules::ResolveInput::default()
        }
    }

    #[test]
    fn emails_become_consistent_pseudonyms_and_settings_are_dropped() {
        let ring = DecisionRing::new(8);
        ring.record_resolve(&resolve("ann@example.com"));
        let snapshot = ring.snapshot();
        let [RecordedInput::Resolve(kept)] = snapshot.as_slice() else {
            panic!("one resolve input: {snapshot:?}")
        };
        let kept = kept.clone();
        let claim = kept.user_claim.unwrap();
        assert!(
            claim.starts_with("anon-") && claim.ends_with("@example.com"),
            "{claim}"
        );
        assert_eq!(
            claim.len(),
            "anon-".len() + 16 + "@example.com".len(),
            "{claim}"
        );
        assert_eq!(kept.users[0].email, claim);
        assert!(kept.settings.is_empty());
        let text = serde_json::to_string(&ring.snapshot()).unwrap();
        assert!(!text.contains("ann@example.com"), "{text}");
    }

    #[test]
    fn the_ring_keeps_the_latest_inputs_once_each() {
        let ring = DecisionRing::new(3);
        for email in ["a@x", "b@x", "a@x", "c@x", "d@x"] {
            ring.record_resolve(&resolve(email));
        }
        assert_eq!(ring.len(), 3);
        let again = DecisionRing::new(0);
        again.record_resolve(&resolve("a@x"));
        assert!(again.is_empty());
    }

    #[test]
    fn logins_drop_names_and_pseudonymise_email_and_subject() {
        let ring = DecisionRing::new(8);
        ring.record_login(&rules::LoginInput {
            mode: rules::ProvisioningMode::Jit,
            sso_configured: true,
            claims: rules::LoginClaims {
                email: "ann@example.com".into(),
                subject: "s-1".into(),
                name: Some("Ann".into()),
                given_name: Some("Ann".into()),
                family_name: Some("Lee".into()),
            },
            user: None,
            settings: String::new(),
        });
        let text = serde_json::to_string(&ring.snapshot()).unwrap();
        for secret in ["ann@example.com", "s-1", "Ann", "Lee"] {
            assert!(!text.contains(secret), "{secret} kept: {text}");
        }
    }
}
