//! The rest of a tenant's directory: virtual accounts and their tokens, identity
//! providers, SSO configurations and their SCIM tokens, resources and collaborators.
//! Same discipline as `identity`: the tenant's write lock, one audited batch.

use super::identity::{new_token, put_token, Caller, TokenCreated};
use super::{now, App, AppError};
use crate::identity::{
    new_id, Collaborator, IdentityProvider, Mapping, Resource, SsoConfig, Subject, Team, Token,
    TokenKind, User, VirtualAccount,
};
use crate::model::TenantId;
use crate::policy;
use crate::store::{Batch, Space};
use gatehouse_rules::Role;
use serde::{Deserialize, Serialize};
use time::Duration;

/// Algorithms an identity provider may allow: asymmetric only (a JWKS holds public keys).
pub const ALLOWED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A new virtual account.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVirtualAccount {
    pub name: String,
    #[serde(default = "member")]
    pub role: Role,
    #[serde(default)]
    pub mappings: Vec<Mapping>,
}

fn member() -> Role {
    Role::Member
}

/// A change to a virtual account; absent fields stay.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualAccountPatch {
    pub enabled: Option<bool>,
    pub role: Option<Role>,
    pub mappings: Option<Vec<Mapping>>,
}

/// A new VA token; `replaces` regenerates an existing token, which stays valid for
/// `grace_seconds` (0: revoked at once).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVaToken {
    pub name: String,
    #[serde(default)]
    pub expires_in_days: Option<i64>,
    #[serde(default)]
    pub replaces: Option<String>,
    #[serde(default)]
    pub grace_seconds: Option<i64>,
}

/// An identity provider as written by an admin.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdpInput {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub discovery_url: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u32,
    #[serde(default)]
    pub user_claim: Option<String>,
    #[serde(default)]
    pub va_name_claim: Option<String>,
    #[serde(default)]
    pub team_claim: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_leeway() -> u32 {
    60
}

/// An SSO configuration as written by an admin.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoInput {
    pub id: String,
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub discovery_url: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub email_claim: Option<String>,
    #[serde(default)]
    pub unique_id_claim: Option<String>,
}

/// An SSO configuration as shown: never its client secret or SCIM token hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SsoView {
    pub id: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_set: bool,
    pub discovery_url: Option<String>,
    pub jwks_uri: Option<String>,
    pub email_claim: String,
    pub unique_id_claim: String,
    pub scim_base_url: String,
    pub scim_token_set: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub scim_token_created_at: Option<time::OffsetDateTime>,
}

/// A SCIM token, shown once, with the endpoint it opens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScimToken {
    pub token: String,
    pub scim_base_url: String,
}

/// A new resource.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewResource {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub collaborators: Vec<Collaborator>,
}

impl App {
    // ----------------------------------------------------- virtual accounts

    /// Every virtual account.
    pub fn virtual_accounts(
        &self,
        tenant: &str,
        caller: &Caller,
    ) -> Result<Vec<VirtualAccount>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        Ok(self.store.list(&slug, &[])?)
    }

    /// One virtual account.
    pub fn virtual_account(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<VirtualAccount, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        self.existing_va(&slug, id)
    }

    fn existing_va(&self, tenant: &str, id: &str) -> Result<VirtualAccount, AppError> {
        self.store
            .get(tenant, &[id])?
            .ok_or_else(|| AppError::NotFound(format!("virtual account {id}")))
    }

    /// Creates a virtual account (enabled). Its name follows the slug rule and is unique;
    /// each mapping names an existing identity provider and is used by one VA only.
    pub fn create_virtual_account(
        &self,
        tenant: &str,
        new: NewVirtualAccount,
        caller: &Caller,
    ) -> Result<VirtualAccount, AppError> {
        caller.require_admin()?;
        TenantId::parse(&new.name).map_err(|_| {
            AppError::BadRequest(format!(
                "virtual account name {:?} is invalid: use 1-63 of a-z 0-9 - starting with a letter or digit",
                new.name
            ))
        })?;
        self.with_tenant(tenant, |slug| {
            let now = now();
            let va = VirtualAccount {
                id: new_id("va_"),
                name: new.name.clone(),
                enabled: true,
                role: new.role,
                mappings: new.mappings.clone(),
                created_at: now,
                updated_at: now,
            };
            let mut batch = Batch::new(slug);
            stage_new_va(&mut batch, &va);
            self.put_va_mappings(slug, &mut batch, &va.id, &[], &va.mappings)?;
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "virtual_account.create",
                &va.id,
                None,
                Some(&va),
            );
            self.store.apply(&batch)?;
            Ok(va)
        })
    }

    /// Enables or disables a virtual account, or changes its role or mappings.
    pub fn patch_virtual_account(
        &self,
        tenant: &str,
        id: &str,
        patch: VirtualAccountPatch,
        caller: &Caller,
    ) -> Result<VirtualAccount, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before = self.existing_va(slug, id)?;
            let after = VirtualAccount {
                enabled: patch.enabled.unwrap_or(before.enabled),
                role: patch.role.unwrap_or(before.role),
                mappings: patch
                    .mappings
                    .clone()
                    .unwrap_or_else(|| before.mappings.clone()),
                updated_at: now(),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put(&[id], &after);
            self.put_va_mappings(slug, &mut batch, id, &before.mappings, &after.mappings)?;
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "virtual_account.update",
                id,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    /// Deletes a virtual account, its mappings and its tokens; refused while it
    /// collaborates on a resource.
    pub fn delete_virtual_account(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let va = self.existing_va(slug, id)?;
            let subject = Subject::VirtualAccount(id.to_owned());
            let blocking: Vec<String> = self
                .store
                .list::<Resource>(slug, &[])?
                .into_iter()
                .filter(|r| r.collaborators.iter().any(|c| c.subject == subject))
                .map(|r| format!("{} {}", r.kind, r.name))
                .collect();
            if !blocking.is_empty() {
                return Err(AppError::Conflict(format!(
                    "virtual account {} cannot be deleted while it collaborates on: {}",
                    va.name,
                    blocking.join(", ")
                )));
            }
            let mut batch = Batch::new(slug);
            batch
                .remove(Space::VirtualAccounts, &[id])
                .remove(Space::VaNames, &[&va.name]);
            self.put_va_mappings(slug, &mut batch, id, &va.mappings, &[])?;
            for token in self.owner_tokens(slug, id)? {
                batch
                    .remove(Space::Tokens, &[&token.sha256])
                    .remove(Space::OwnerTokens, &[id, &token.id]);
            }
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "virtual_account.delete",
                id,
                Some(&va),
                None,
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Replaces a VA's mapping index entries `old` by `new`, checking each new mapping.
    fn put_va_mappings(
        &self,
        tenant: &str,
        batch: &mut Batch,
        va: &str,
        old: &[Mapping],
        new: &[Mapping],
    ) -> Result<(), AppError> {
        let added: Vec<Mapping> = new.iter().filter(|m| !old.contains(m)).cloned().collect();
        self.check_mappings(tenant, &added)?;
        stage_va_mappings(batch, va, old, new);
        Ok(())
    }

    /// Each mapping is well-formed and names an identity provider of the tenant.
    pub(super) fn check_mappings(
        &self,
        tenant: &str,
        mappings: &[Mapping],
    ) -> Result<(), AppError> {
        for mapping in mappings {
            mapping.validate().map_err(AppError::BadRequest)?;
            if self
                .store
                .get::<IdentityProvider>(tenant, &[&mapping.idp])?
                .is_none()
            {
                return Err(AppError::BadRequest(format!(
                    "no identity provider named {} in this tenant",
                    mapping.idp
                )));
            }
        }
        Ok(())
    }

    /// A VA's tokens (never their secrets).
    pub fn va_tokens(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<Vec<Token>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        self.existing_va(&slug, id)?;
        self.owner_tokens(&slug, id)
    }

    /// Creates a VA token, or regenerates one (`replaces`), keeping the old one valid
    /// for `grace_seconds` (at most a day).
    pub fn create_va_token(
        &self,
        tenant: &str,
        id: &str,
        new: NewVaToken,
        caller: &Caller,
    ) -> Result<TokenCreated, AppError> {
        caller.require_admin()?;
        let days = new.expires_in_days.unwrap_or(365);
        if !(1..=3650).contains(&days) {
            return Err(AppError::BadRequest(format!(
                "expires_in_days {days} is invalid: use 1-3650"
            )));
        }
        let grace = new.grace_seconds.unwrap_or(0);
        if !(0..=86_400).contains(&grace) {
            return Err(AppError::BadRequest(format!(
                "grace_seconds {grace} is invalid: use 0-86400"
            )));
        }
        if new.name.trim().is_empty() || new.name.len() > 100 {
            return Err(AppError::BadRequest(
                "a token name must be 1-100 characters".into(),
            ));
        }
        self.with_tenant(tenant, |slug| {
            self.existing_va(slug, id)?;
            let now = now();
            let mut batch = Batch::new(slug);
            let mut audit = self.audit_log(slug)?;
            if let Some(old) = &new.replaces {
                let before = self
                    .owner_tokens(slug, id)?
                    .into_iter()
                    .find(|t| &t.id == old)
                    .ok_or_else(|| AppError::NotFound(format!("token {old}")))?;
                let revoke_at = now + Duration::seconds(grace);
                let after = Token {
                    revoked_at: Some(before.revoked_at.map_or(revoke_at, |r| r.min(revoke_at))),
                    ..before.clone()
                };
                batch.put(&[&after.sha256], &after);
                audit.record(
                    &mut batch,
                    &caller.actor(),
                    "token.rotate",
                    &after.id,
                    Some(&before),
                    Some(&after),
                );
            }
            let (token, secret) = new_token(
                TokenKind::VirtualAccount,
                slug,
                id,
                new.name.trim(),
                Some(now + Duration::days(days)),
                now,
            );
            put_token(&mut batch, &token);
            audit.record(
                &mut batch,
                &caller.actor(),
                "token.create",
                &token.id,
                None,
                Some(&token),
            );
            self.store.apply(&batch)?;
            Ok(TokenCreated { token, secret })
        })
    }

    /// Revokes a VA token at once.
    pub fn revoke_va_token(
        &self,
        tenant: &str,
        id: &str,
        token: &str,
        caller: &Caller,
    ) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before = self
                .owner_tokens(slug, id)?
                .into_iter()
                .find(|t| t.id == token)
                .ok_or_else(|| AppError::NotFound(format!("token {token}")))?;
            let after = Token {
                revoked_at: Some(now()),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put(&[&after.sha256], &after);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "token.revoke",
                token,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    // --------------------------------------------------- identity providers

    /// Every identity provider.
    pub fn identity_providers(
        &self,
        tenant: &str,
        caller: &Caller,
    ) -> Result<Vec<IdentityProvider>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        Ok(self.store.list(&slug, &[])?)
    }

    /// Creates (`create`) or replaces an identity provider, refusing what would be unsafe:
    /// HMAC or `none` algorithms, an issuer another IdP of the tenant uses, an issuer shared
    /// with another tenant without audiences, a JWKS or discovery URL that is not https or
    /// points to a private address (unless the operator allows it).
    pub fn put_identity_provider(
        &self,
        tenant: &str,
        input: IdpInput,
        create: bool,
        caller: &Caller,
    ) -> Result<IdentityProvider, AppError> {
        caller.require_admin()?;
        self.check_idp(&input)?;
        self.with_tenant(tenant, |slug| {
            let before: Option<IdentityProvider> = self.store.get(slug, &[&input.name])?;
            create_or_replace(before.is_some(), create, "identity provider", &input.name)?;
            self.check_issuer_sharing(slug, &input)?;
            let now = now();
            let idp = IdentityProvider {
                name: input.name.clone(),
                issuer: input.issuer.clone(),
                jwks_uri: input.jwks_uri.clone(),
                discovery_url: input.discovery_url.clone(),
                audiences: input.audiences.clone(),
                algorithms: input.algorithms.clone(),
                leeway_seconds: input.leeway_seconds,
                user_claim: input.user_claim.clone(),
                va_name_claim: input.va_name_claim.clone(),
                team_claim: input.team_claim.clone(),
                created_at: before.as_ref().map_or(now, |b| b.created_at),
                updated_at: now,
            };
            let mut batch = Batch::new(slug);
            stage_identity_provider(&mut batch, before.as_ref(), &idp);
            let action = if create {
                "identity_provider.create"
            } else {
                "identity_provider.update"
            };
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                action,
                &idp.name,
                before.as_ref(),
                Some(&idp),
            );
            self.store.apply(&batch)?;
            Ok(idp)
        })
    }

    pub(super) fn check_idp(&self, input: &IdpInput) -> Result<(), AppError> {
        let bad = |m: String| Err(AppError::BadRequest(m));
        if TenantId::parse(&input.name).is_err() {
            return bad(format!(
                "identity provider name {:?} is invalid: use 1-63 of a-z 0-9 - starting with a letter or digit",
                input.name
            ));
        }
        if input.issuer.trim().is_empty() || input.issuer.len() > 512 {
            return bad("issuer must be 1-512 characters".into());
        }
        let url = match (&input.jwks_uri, &input.discovery_url) {
            (Some(url), None) | (None, Some(url)) => url,
            _ => return bad("give exactly one of jwks_uri and discovery_url".into()),
        };
        crate::netguard::check_fetch_url(url, self.allow_private_urls)
            .map_err(AppError::BadRequest)?;
        if input.algorithms.is_empty() {
            return bad(format!(
                "algorithms must name at least one of {}",
                ALLOWED_ALGORITHMS.join(", ")
            ));
        }
        for alg in &input.algorithms {
            if !ALLOWED_ALGORITHMS.contains(&alg.as_str()) {
                return bad(format!(
                    "algorithm {alg:?} is not allowed: use {} (HMAC and none are refused: a JWKS holds public keys)",
                    ALLOWED_ALGORITHMS.join(", ")
                ));
            }
        }
        if input.leeway_seconds > 300 {
            return bad(format!(
                "leeway_seconds {} is invalid: use 0-300",
                input.leeway_seconds
            ));
        }
        if input
            .audiences
            .iter()
            .any(|a| a.is_empty() || a.len() > 512)
        {
            return bad("each audience must be 1-512 characters".into());
        }
        for (field, path) in [
            ("user_claim", &input.user_claim),
            ("va_name_claim", &input.va_name_claim),
            ("team_claim", &input.team_claim),
        ] {
            if let Some(path) = path {
                gatehouse_rules::check_claim_path(path)
                    .map_err(|why| AppError::BadRequest(format!("{field}: {why}")))?;
            }
        }
        Ok(())
    }

    /// An issuer used by another tenant's IdP too needs audiences on both sides, or a token
    /// minted for one tenant would be accepted by the other.
    pub(super) fn check_issuer_sharing(
        &self,
        tenant: &str,
        input: &IdpInput,
    ) -> Result<(), AppError> {
        for other in self
            .store
            .tenants()?
            .into_iter()
            .filter(|t| t.slug != tenant)
        {
            let Some(name) =
                self.store
                    .get_raw(Space::IdpIssuers, &other.slug, &[&input.issuer])?
            else {
                continue;
            };
            let theirs: Option<IdentityProvider> = self
                .store
                .get(&other.slug, &[&String::from_utf8_lossy(&name)])?;
            if input.audiences.is_empty() || theirs.is_some_and(|t| t.audiences.is_empty()) {
                return Err(AppError::Conflict(format!(
                    "issuer {} is also used by another tenant: both identity providers need audiences so a token for one is never accepted by the other",
                    input.issuer
                )));
            }
        }
        Ok(())
    }

    /// Deletes an identity provider; refused while a VA, team or user maps to it.
    pub fn delete_identity_provider(
        &self,
        tenant: &str,
        name: &str,
        caller: &Caller,
    ) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let idp: IdentityProvider = self
                .store
                .get(slug, &[name])?
                .ok_or_else(|| AppError::NotFound(format!("identity provider {name}")))?;
            let uses = |mappings: &[Mapping]| mappings.iter().any(|m| m.idp == name);
            let mut blocking: Vec<String> = Vec::new();
            blocking.extend(
                self.store
                    .list::<VirtualAccount>(slug, &[])?
                    .into_iter()
                    .filter(|v| uses(&v.mappings))
                    .map(|v| format!("virtual account {}", v.name)),
            );
            blocking.extend(
                self.store
                    .list::<Team>(slug, &[])?
                    .into_iter()
                    .filter(|t| uses(&t.mappings))
                    .map(|t| format!("team {}", t.name)),
            );
            blocking.extend(
                self.store
                    .list::<User>(slug, &[])?
                    .into_iter()
                    .filter(|u| uses(&u.mappings))
                    .map(|u| format!("user {}", u.email)),
            );
            if !blocking.is_empty() {
                return Err(AppError::Conflict(format!(
                    "identity provider {name} is mapped by: {}",
                    blocking.join(", ")
                )));
            }
            let mut batch = Batch::new(slug);
            batch
                .remove(Space::IdentityProviders, &[name])
                .remove(Space::IdpIssuers, &[&idp.issuer]);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "identity_provider.delete",
                name,
                Some(&idp),
                None,
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    // ---------------------------------------------------- SSO configurations

    /// Every SSO configuration, without secrets.
    pub fn sso_configs(&self, tenant: &str, caller: &Caller) -> Result<Vec<SsoView>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        Ok(self
            .store
            .list::<SsoConfig>(&slug, &[])?
            .iter()
            .map(|c| sso_view(&slug, c))
            .collect())
    }

    /// Creates or replaces an SSO configuration. The SCIM token and an unchanged client
    /// secret are kept on replace.
    pub fn put_sso_config(
        &self,
        tenant: &str,
        input: SsoInput,
        create: bool,
        caller: &Caller,
    ) -> Result<SsoView, AppError> {
        caller.require_admin()?;
        if TenantId::parse(&input.id).is_err() {
            return Err(AppError::BadRequest(format!(
                "SSO configuration id {:?} is invalid: use 1-63 of a-z 0-9 - starting with a letter or digit",
                input.id
            )));
        }
        if input.issuer.trim().is_empty() || input.client_id.trim().is_empty() {
            return Err(AppError::BadRequest(
                "issuer and client_id are required".into(),
            ));
        }
        let url = match (&input.discovery_url, &input.jwks_uri) {
            (Some(url), None) | (None, Some(url)) => url,
            _ => {
                return Err(AppError::BadRequest(
                    "give exactly one of discovery_url and jwks_uri".into(),
                ))
            }
        };
        crate::netguard::check_fetch_url(url, self.allow_private_urls)
            .map_err(AppError::BadRequest)?;
        for (field, path) in [
            ("email_claim", &input.email_claim),
            ("unique_id_claim", &input.unique_id_claim),
        ] {
            if let Some(path) = path {
                gatehouse_rules::check_claim_path(path)
                    .map_err(|why| AppError::BadRequest(format!("{field}: {why}")))?;
            }
        }
        self.with_tenant(tenant, |slug| {
            let before: Option<SsoConfig> = self.store.get(slug, &[&input.id])?;
            create_or_replace(before.is_some(), create, "SSO configuration", &input.id)?;
            let now = now();
            let config = SsoConfig {
                id: input.id.clone(),
                issuer: input.issuer.clone(),
                client_id: input.client_id.clone(),
                client_secret: input
                    .client_secret
                    .clone()
                    .or_else(|| before.as_ref().and_then(|b| b.client_secret.clone())),
                discovery_url: input.discovery_url.clone(),
                jwks_uri: input.jwks_uri.clone(),
                email_claim: input.email_claim.clone().unwrap_or_else(|| "email".into()),
                unique_id_claim: input
                    .unique_id_claim
                    .clone()
                    .unwrap_or_else(|| "sub".into()),
                scim_token_sha256: before.as_ref().and_then(|b| b.scim_token_sha256.clone()),
                scim_token_created_at: before.as_ref().and_then(|b| b.scim_token_created_at),
                created_at: before.as_ref().map_or(now, |b| b.created_at),
                updated_at: now,
            };
            let mut batch = Batch::new(slug);
            batch.put(&[&config.id], &config);
            let action = if create { "sso.create" } else { "sso.update" };
            let (before_view, after_view) = (
                before.as_ref().map(|b| sso_view(slug, b)),
                sso_view(slug, &config),
            );
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                action,
                &config.id,
                before_view.as_ref(),
                Some(&after_view),
            );
            self.store.apply(&batch)?;
            Ok(after_view)
        })
    }

    /// Deletes an SSO configuration (and with it its SCIM endpoint); refused for the last
    /// one while the tenant is in `jit` mode.
    pub fn delete_sso_config(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let config: SsoConfig =
                self.store.get(slug, &[id])?.ok_or_else(|| AppError::NotFound(format!("SSO configuration {id}")))?;
            let remaining = self.store.list::<SsoConfig>(slug, &[])?.len() - 1;
            if remaining == 0 && self.tenant(slug)?.mode == "jit" {
                return Err(AppError::Conflict(
                    "the tenant is in jit mode, which needs an SSO configuration: switch the mode first".into(),
                ));
            }
            let mut batch = Batch::new(slug);
            batch.remove(Space::SsoConfigs, &[id]);
            self.stage_sso_bindings_removal(slug, id, &mut batch)?;
            self.audit_log(slug)?.record(&mut batch, &caller.actor(), "sso.delete", id, Some(&sso_view(slug, &config)), None);
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Generates the SCIM bearer token of an SSO configuration (shown once); the previous
    /// token stops working at once.
    pub fn generate_scim_token(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<ScimToken, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before: SsoConfig = self
                .store
                .get(slug, &[id])?
                .ok_or_else(|| AppError::NotFound(format!("SSO configuration {id}")))?;
            let token = super::new_secret("gscim_");
            let after = SsoConfig {
                scim_token_sha256: Some(hex::encode(policy::sha256(token.as_bytes()))),
                scim_token_created_at: Some(now()),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put(&[id], &after);
            self.audit_log(slug)?.record::<()>(
                &mut batch,
                &caller.actor(),
                "sso.scim_token",
                id,
                None,
                None,
            );
            self.store.apply(&batch)?;
            Ok(ScimToken {
                token,
                scim_base_url: scim_base_url(slug, id),
            })
        })
    }

    /// Whether the tenant has at least one SSO configuration.
    pub fn has_sso_config(&self, tenant: &str) -> Result<bool, AppError> {
        Ok(!self.store.list::<SsoConfig>(tenant, &[])?.is_empty())
    }

    // ------------------------------------------------------------ resources

    /// Every resource.
    pub fn resources(&self, tenant: &str, caller: &Caller) -> Result<Vec<Resource>, AppError> {
        caller.require_admin()?;
        let slug = self.tenant(tenant)?.slug;
        Ok(self.store.list(&slug, &[])?)
    }

    /// Creates a resource with its collaborators.
    pub fn create_resource(
        &self,
        tenant: &str,
        new: NewResource,
        caller: &Caller,
    ) -> Result<Resource, AppError> {
        caller.require_admin()?;
        if new.kind.trim().is_empty()
            || new.name.trim().is_empty()
            || new.kind.len() > 64
            || new.name.len() > 256
        {
            return Err(AppError::BadRequest(
                "a resource needs a kind (1-64 characters) and a name (1-256)".into(),
            ));
        }
        self.with_tenant(tenant, |slug| {
            self.check_collaborators(slug, &new.collaborators)?;
            let resource = Resource {
                id: new_id("res_"),
                kind: new.kind.trim().to_owned(),
                name: new.name.trim().to_owned(),
                collaborators: new.collaborators.clone(),
                created_by: caller.actor(),
                created_at: now(),
            };
            let mut batch = Batch::new(slug);
            batch.put(&[&resource.id], &resource);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "resource.create",
                &resource.id,
                None,
                Some(&resource),
            );
            self.store.apply(&batch)?;
            Ok(resource)
        })
    }

    /// Replaces a resource's collaborators.
    pub fn set_collaborators(
        &self,
        tenant: &str,
        id: &str,
        collaborators: Vec<Collaborator>,
        caller: &Caller,
    ) -> Result<Resource, AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before: Resource = self
                .store
                .get(slug, &[id])?
                .ok_or_else(|| AppError::NotFound(format!("resource {id}")))?;
            self.check_collaborators(slug, &collaborators)?;
            let after = Resource {
                collaborators: collaborators.clone(),
                ..before.clone()
            };
            let mut batch = Batch::new(slug);
            batch.put(&[id], &after);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "resource.collaborators",
                id,
                Some(&before),
                Some(&after),
            );
            self.store.apply(&batch)?;
            Ok(after)
        })
    }

    /// Deletes a resource.
    pub fn delete_resource(&self, tenant: &str, id: &str, caller: &Caller) -> Result<(), AppError> {
        caller.require_admin()?;
        self.with_tenant(tenant, |slug| {
            let before: Resource = self
                .store
                .get(slug, &[id])?
                .ok_or_else(|| AppError::NotFound(format!("resource {id}")))?;
            let mut batch = Batch::new(slug);
            batch.remove(Space::Resources, &[id]);
            self.audit_log(slug)?.record(
                &mut batch,
                &caller.actor(),
                "resource.delete",
                id,
                Some(&before),
                None,
            );
            self.store.apply(&batch)?;
            Ok(())
        })
    }

    /// Each collaborator names an existing user, team or virtual account of the tenant
    /// (legacy External Identities are kept by name for the migration).
    pub(super) fn check_collaborators(
        &self,
        tenant: &str,
        collaborators: &[Collaborator],
    ) -> Result<(), AppError> {
        for collaborator in collaborators {
            if collaborator.role.trim().is_empty() || collaborator.role.len() > 64 {
                return Err(AppError::BadRequest(
                    "a collaborator role must be 1-64 characters".into(),
                ));
            }
            let exists = match &collaborator.subject {
                Subject::User(id) => self.store.get::<User>(tenant, &[id])?.is_some(),
                Subject::Team(id) => self.store.get::<Team>(tenant, &[id])?.is_some(),
                Subject::VirtualAccount(id) => {
                    self.store.get::<VirtualAccount>(tenant, &[id])?.is_some()
                }
                Subject::ExternalIdentity(name) => !name.is_empty(),
            };
            if !exists {
                return Err(AppError::BadRequest(format!(
                    "collaborator {:?} does not exist in this tenant",
                    collaborator.subject
                )));
            }
        }
        Ok(())
    }
}

/// Puts an identity provider and its issuer index entry into `batch` (the issuer must be
/// free unless `before` already had it).
pub(super) fn stage_identity_provider(
    batch: &mut Batch,
    before: Option<&IdentityProvider>,
    idp: &IdentityProvider,
) {
    if let Some(before) = before {
        if before.issuer != idp.issuer {
            batch.remove(Space::IdpIssuers, &[&before.issuer]);
        }
    }
    if before.is_none_or(|b| b.issuer != idp.issuer) {
        batch.require_absent(
            Space::IdpIssuers,
            &[&idp.issuer],
            format!(
                "issuer {} is already used by another identity provider of this tenant",
                idp.issuer
            ),
        );
    }
    batch
        .put(&[&idp.name], idp)
        .put_raw(Space::IdpIssuers, &[&idp.issuer], idp.name.as_bytes());
}

/// Replaces a VA's mapping index entries `old` by `new` in `batch` (each new pair must be
/// free); the caller has checked the mappings.
/// Puts a new virtual account into `batch` with its name taken: the batch fails when an
/// account of that name exists by the time it is applied. Its mappings are staged apart.
pub(super) fn stage_new_va(batch: &mut Batch, va: &VirtualAccount) {
    batch
        .require_absent(
            Space::VaNames,
            &[&va.name],
            format!("a virtual account named {} already exists", va.name),
        )
        .put(&[&va.id], va)
        .put_raw(Space::VaNames, &[&va.name], va.id.as_bytes());
}

pub(super) fn stage_va_mappings(batch: &mut Batch, va: &str, old: &[Mapping], new: &[Mapping]) {
    for mapping in old.iter().filter(|m| !new.contains(m)) {
        batch.remove(Space::VaMappings, &[&mapping.idp, &mapping.value]);
    }
    for mapping in new.iter().filter(|m| !old.contains(m)) {
        batch
            .require_absent(
                Space::VaMappings,
                &[&mapping.idp, &mapping.value],
                format!(
                    "another virtual account already maps {} on {}",
                    mapping.value, mapping.idp
                ),
            )
            .put_raw(
                Space::VaMappings,
                &[&mapping.idp, &mapping.value],
                va.as_bytes(),
            );
    }
}

fn scim_base_url(tenant: &str, id: &str) -> String {
    format!("/scim/v2/{tenant}/{id}")
}

pub(super) fn sso_view(tenant: &str, config: &SsoConfig) -> SsoView {
    SsoView {
        id: config.id.clone(),
        issuer: config.issuer.clone(),
        client_id: config.client_id.clone(),
        client_secret_set: config.client_secret.is_some(),
        discovery_url: config.discovery_url.clone(),
        jwks_uri: config.jwks_uri.clone(),
        email_claim: config.email_claim.clone(),
        unique_id_claim: config.unique_id_claim.clone(),
        scim_base_url: scim_base_url(tenant, &config.id),
        scim_token_set: config.scim_token_sha256.is_some(),
        scim_token_created_at: config.scim_token_created_at,
    }
}

/// A create (`POST`) needs the record absent, a replace (`PUT`) needs it present.
fn create_or_replace(exists: bool, create: bool, what: &str, name: &str) -> Result<(), AppError> {
    match (exists, create) {
        (true, true) => Err(AppError::Conflict(format!("{what} {name} already exists"))),
        (false, false) => Err(AppError::NotFound(format!("{what} {name}"))),
        _ => Ok(()),
    }
}
