//! A tenant's identity data as the edge needs it, in memory: built from the store in one
//! pass, never changed (a change builds a new one), so lookups take no lock.

use crate::identity::{IdentityProvider, Team, Token, TokenKind, User, VirtualAccount};
use crate::jwt::jwks::KeyLocation;
use crate::store::{Space, Store};
use gatehouse_rules::{self as rules, Role, UserStatus};
use jsonwebtoken::Algorithm;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub struct DirUser {
    pub email: String,
    pub status: UserStatus,
    pub role: Role,
    /// Team ids.
    pub teams: Vec<String>,
    /// When the user was last deactivated (Unix seconds): sessions issued until then are
    /// revoked for good.
    pub deactivated_at: Option<i64>,
}

pub struct DirVa {
    pub name: String,
    pub enabled: bool,
    pub role: Role,
}

pub enum TokenOwner {
    User(String),
    VirtualAccount(String),
}

pub struct DirToken {
    pub owner: TokenOwner,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub struct DirIdp {
    pub name: String,
    pub keys: KeyLocation,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_seconds: i64,
    pub claims: rules::IdpClaims,
}

/// One tenant's snapshot.
pub struct Directory {
    pub tenant: String,
    /// The tenant generation it was built at.
    pub generation: u64,
    pub users: HashMap<String, DirUser>,
    by_email: HashMap<String, String>,
    /// SCIM `userName` (lowercased) → user id, for users without an email (SPEC §7): the
    /// userName stands in for the email. A userName two connections gave different users
    /// maps to `None`: ambiguous, so it matches no one.
    by_user_name: HashMap<String, Option<String>>,
    /// `idp\0value` → user id.
    user_mappings: HashMap<String, String>,
    pub vas: HashMap<String, DirVa>,
    /// `idp\0value` → virtual account id.
    va_mappings: HashMap<String, String>,
    pub team_names: HashMap<String, String>,
    /// `idp\0value` → team ids.
    team_mappings: HashMap<String, Vec<String>>,
    /// SHA-256 of the secret → token.
    pub tokens: HashMap<[u8; 32], DirToken>,
    /// Exact issuer → identity provider.
    pub idps: HashMap<String, Arc<DirIdp>>,
    /// The tenant's session verification keys by `kid` (public halves only).
    pub session_keys: HashMap<String, Arc<crate::jwt::jwks::Key>>,
    /// Sessions logged out before their expiry.
    pub revoked_sessions: HashSet<String>,
}

fn mapping_key(idp: &str, value: &str) -> String {
    let mut key = String::with_capacity(idp.len() + value.len() + 1);
    key.push_str(idp);
    key.push('\0');
    key.push_str(value);
    key
}

impl Directory {
    /// Reads everything the edge needs for `tenant`.
    pub fn build(store: &Store, tenant: &str, generation: u64) -> Result<Directory, String> {
        let e = |e: crate::store::StoreError| e.to_string();
        let teams_of = || {
            let mut teams_of: HashMap<String, Vec<String>> = HashMap::new();
            for pair in store.index(Space::UserTeams, tenant, &[])? {
                if let Some((user, team)) = pair.split_once('\0') {
                    teams_of
                        .entry(user.to_owned())
                        .or_default()
                        .push(team.to_owned());
                }
            }
            Ok::<_, crate::store::StoreError>(teams_of)
        };
        let mut users = Vec::new();
        // The two big reads, users and their team memberships, run side by side on the
        // embedded store: on a restarted edge with 100,000 users they are most of the time
        // to its first answer. (On a database each would hold a pooled connection.)
        let mut teams_of = std::thread::scope(|scope| {
            let teams = (!store.is_shared())
                .then(|| {
                    std::thread::Builder::new()
                        .name("gatehouse-directory".into())
                        .spawn_scoped(scope, teams_of)
                        .ok()
                })
                .flatten();
            store.each::<User>(tenant, &[], &mut |user| users.push(user))?;
            match teams {
                Some(teams) => teams
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                None => teams_of(),
            }
        })
        .map_err(e)?;
        let mut dir = Directory {
            tenant: tenant.to_owned(),
            generation,
            users: HashMap::with_capacity(users.len()),
            by_email: HashMap::with_capacity(users.len()),
            by_user_name: HashMap::new(),
            user_mappings: HashMap::new(),
            vas: HashMap::new(),
            va_mappings: HashMap::new(),
            team_names: HashMap::new(),
            team_mappings: HashMap::new(),
            tokens: HashMap::new(),
            idps: HashMap::new(),
            session_keys: HashMap::new(),
            revoked_sessions: HashSet::new(),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for revoked in store
            .list::<crate::app::RevokedSession>(tenant, &[])
            .map_err(e)?
        {
            if revoked.expires_at > now {
                dir.revoked_sessions.insert(revoked.session_id);
            }
        }
        for record in store
            .list::<crate::app::SessionKeyRecord>(tenant, &[])
            .map_err(e)?
        {
            if let Some(key) = record.verification_key() {
                dir.session_keys.insert(record.kid.clone(), key);
            }
        }
        let mut without_email = false;
        for user in users {
            if user.email.is_empty() {
                without_email = true;
            } else {
                dir.by_email
                    .insert(user.email.to_lowercase(), user.id.clone());
            }
            for m in &user.mappings {
                dir.user_mappings
                    .insert(mapping_key(&m.idp, &m.value), user.id.clone());
            }
            let teams = teams_of.remove(&user.id).unwrap_or_default();
            dir.users.insert(
                user.id,
                DirUser {
                    email: user.email,
                    status: user.status,
                    role: user.role,
                    teams,
                    deactivated_at: user.deactivated_at.map(|at| at.unix_timestamp()),
                },
            );
        }
        // SCIM records are read only for what they add: the `userName` of users without an
        // email.
        if without_email {
            store
                .each::<crate::scim::resource::ScimUser>(tenant, &[], &mut |scim| {
                    let without_email = dir
                        .users
                        .get(&scim.user)
                        .is_some_and(|u| u.email.is_empty());
                    if without_email && scim.deleted_at.is_none() {
                        dir.by_user_name
                            .entry(scim.user_name.to_lowercase())
                            .and_modify(|id| {
                                if id.as_deref() != Some(scim.user.as_str()) {
                                    *id = None;
                                }
                            })
                            .or_insert_with(|| Some(scim.user.clone()));
                    }
                })
                .map_err(e)?;
        }
        for team in store.list::<Team>(tenant, &[]).map_err(e)? {
            for m in &team.mappings {
                dir.team_mappings
                    .entry(mapping_key(&m.idp, &m.value))
                    .or_default()
                    .push(team.id.clone());
            }
            dir.team_names.insert(team.id, team.name);
        }
        for va in store.list::<VirtualAccount>(tenant, &[]).map_err(e)? {
            for m in &va.mappings {
                dir.va_mappings
                    .insert(mapping_key(&m.idp, &m.value), va.id.clone());
            }
            dir.vas.insert(
                va.id,
                DirVa {
                    name: va.name,
                    enabled: va.enabled,
                    role: va.role,
                },
            );
        }
        for token in store.list::<Token>(tenant, &[]).map_err(e)? {
            let Some(sha) = hex::decode(&token.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                continue;
            };
            let owner = match token.kind {
                TokenKind::Pat => TokenOwner::User(token.owner),
                TokenKind::VirtualAccount => TokenOwner::VirtualAccount(token.owner),
            };
            dir.tokens.insert(
                sha,
                DirToken {
                    owner,
                    expires_at: token.expires_at.map(|t| t.unix_timestamp()),
                    revoked_at: token.revoked_at.map(|t| t.unix_timestamp()),
                },
            );
        }
        for idp in store.list::<IdentityProvider>(tenant, &[]).map_err(e)? {
            let keys = match (&idp.jwks_uri, &idp.discovery_url) {
                (Some(uri), _) => KeyLocation::Jwks(uri.clone()),
                (None, Some(url)) => KeyLocation::Discovery(url.clone()),
                (None, None) => continue,
            };
            let algorithms = idp
                .algorithms
                .iter()
                .filter_map(|a| crate::jwt::asymmetric_algorithm(a).ok())
                .collect();
            dir.idps.insert(
                idp.issuer.clone(),
                Arc::new(DirIdp {
                    keys,
                    audiences: idp.audiences,
                    algorithms,
                    leeway_seconds: i64::from(idp.leeway_seconds),
                    claims: rules::IdpClaims {
                        user_claim: idp.user_claim,
                        va_name_claim: idp.va_name_claim,
                        team_claim: idp.team_claim,
                    },
                    name: idp.name,
                }),
            );
        }
        Ok(dir)
    }

    /// The policy's `resolve` input for a verified token of `idp` whose mapped claims are
    /// `values`: those values and the candidates that match them.
    pub fn candidates_for(&self, idp: &str, values: &super::ClaimValues) -> rules::ResolveInput {
        self.candidates(
            idp,
            values.user_claim.clone(),
            values.va_name.clone(),
            values.team_values.clone(),
            values
                .extra
                .iter()
                .map(|(path, values)| rules::Claim {
                    path: path.clone(),
                    values: values.clone(),
                })
                .collect(),
        )
    }

    /// The identity provider named `name`.
    pub fn idp_named(&self, name: &str) -> Option<&Arc<DirIdp>> {
        self.idps.values().find(|idp| idp.name == name)
    }

    /// The candidates the host offers the policy for a verified token of `idp`.
    pub fn candidates(
        &self,
        idp: &str,
        user_claim: Option<String>,
        va_name: Option<String>,
        team_values: Vec<String>,
        extra: Vec<rules::Claim>,
    ) -> rules::ResolveInput {
        let virtual_accounts = va_name
            .as_deref()
            .and_then(|name| self.va_mappings.get(&mapping_key(idp, name)))
            .and_then(|id| {
                self.vas.get(id).map(|va| rules::VaCandidate {
                    id: id.clone(),
                    name: va.name.clone(),
                    enabled: va.enabled,
                })
            })
            .into_iter()
            .collect();
        let mut users = Vec::new();
        if let Some(claim) = user_claim.as_deref() {
            let by_mapping = self.user_mappings.get(&mapping_key(idp, claim));
            let lowered = claim.to_lowercase();
            let by_email = self
                .by_email
                .get(&lowered)
                .or_else(|| self.by_user_name.get(&lowered).and_then(Option::as_ref));
            for (id, matched_by) in [
                (by_mapping, rules::UserMatch::Mapping),
                (by_email, rules::UserMatch::Email),
            ] {
                let Some(id) = id else { continue };
                if users.iter().any(|u: &rules::UserCandidate| &u.id == id) {
                    continue;
                }
                if let Some(user) = self.users.get(id) {
                    users.push(rules::UserCandidate {
                        id: id.clone(),
                        email: user.email.clone(),
                        status: user.status,
                        matched_by,
                        teams: user.teams.clone(),
                    });
                }
            }
        }
        let mut teams = Vec::new();
        for value in &team_values {
            for id in self
                .team_mappings
                .get(&mapping_key(idp, value))
                .into_iter()
                .flatten()
            {
                if let Some(name) = self.team_names.get(id) {
                    teams.push(rules::TeamCandidate {
                        id: id.clone(),
                        name: name.clone(),
                        matched: value.clone(),
                    });
                }
            }
        }
        rules::ResolveInput {
            idp: idp.to_owned(),
            user_claim,
            va_name,
            team_values,
            extra,
            virtual_accounts,
            users,
            teams,
            settings: String::new(),
        }
    }
}
