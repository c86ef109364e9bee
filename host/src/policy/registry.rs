//! Which policy each tenant runs, swapped atomically.
//!
//! A request takes an `Arc<TenantPolicy>` once and uses it to the end, so a swap never
//! changes the policy under a request in flight: in-flight requests finish on the version
//! they started with, new ones see the new version, and nothing fails in between.

use super::{Compiled, PolicyEngine, PolicyError};
use arc_swap::ArcSwap;
use gatehouse_rules as rules;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The policy one tenant runs: a compiled component (shared between tenants that run the
/// same bytes), that tenant's settings, and the version number in the tenant's history
/// (`None` for the built-in default).
pub struct TenantPolicy {
    pub version: Option<u64>,
    pub settings: Arc<str>,
    compiled: Result<Arc<Compiled>, String>,
    claim_maps: RwLock<HashMap<rules::IdpClaims, rules::ClaimMap>>,
}

impl TenantPolicy {
    /// A usable policy.
    pub fn new(version: Option<u64>, compiled: Arc<Compiled>, settings: Arc<str>) -> Self {
        TenantPolicy {
            version,
            settings,
            compiled: Ok(compiled),
            claim_maps: RwLock::default(),
        }
    }

    /// A policy that could not be loaded: every decision fails closed with `reason`.
    pub fn unavailable(version: Option<u64>, settings: Arc<str>, reason: String) -> Self {
        TenantPolicy {
            version,
            settings,
            compiled: Err(reason),
            claim_maps: RwLock::default(),
        }
    }

    /// The compiled component, or why there is none.
    pub fn compiled(&self) -> Result<&Arc<Compiled>, PolicyError> {
        self.compiled
            .as_ref()
            .map_err(|reason| PolicyError::Unavailable(reason.clone()))
    }

    /// The login decision with this tenant's settings.
    pub fn login(
        &self,
        engine: &PolicyEngine,
        input: &rules::LoginInput,
    ) -> Result<rules::LoginDecision, PolicyError> {
        let input = rules::LoginInput {
            settings: self.settings.to_string(),
            ..input.clone()
        };
        engine.login(self.compiled()?, &input)
    }

    /// The resolution decision with this tenant's settings.
    pub fn resolve(
        &self,
        engine: &PolicyEngine,
        input: &rules::ResolveInput,
    ) -> Result<rules::ResolveDecision, PolicyError> {
        let input = rules::ResolveInput {
            settings: self.settings.to_string(),
            ..input.clone()
        };
        engine.resolve(self.compiled()?, &input)
    }

    /// Effective roles, one per input.
    pub fn effective_role(
        &self,
        engine: &PolicyEngine,
        inputs: &[rules::RoleInput],
    ) -> Result<Vec<rules::RoleDecision>, PolicyError> {
        engine.effective_role(self.compiled()?, inputs, &self.settings)
    }

    /// The claim map for an identity provider; asked once per policy version and IdP,
    /// since it depends on nothing else.
    pub fn claim_mapping(
        &self,
        engine: &PolicyEngine,
        idp: &rules::IdpClaims,
    ) -> Result<rules::ClaimMap, PolicyError> {
        if let Some(map) = self
            .claim_maps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(idp)
        {
            return Ok(map.clone());
        }
        let map = engine.claim_mapping(self.compiled()?, idp, &self.settings)?;
        let mut cache = self.claim_maps.write().unwrap_or_else(|p| p.into_inner());
        // A tenant has few IdPs; the bound only stops a pathological caller.
        if cache.len() < 1024 {
            cache.insert(idp.clone(), map.clone());
        }
        Ok(map)
    }
}

/// Every tenant's current policy.
#[derive(Default)]
pub struct Registry {
    tenants: RwLock<HashMap<String, Arc<ArcSwap<TenantPolicy>>>>,
}

impl Registry {
    /// The tenant's current policy, if the tenant is known.
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantPolicy>> {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.get(tenant).map(|slot| slot.load_full())
    }

    /// Makes `policy` the tenant's current one, atomically.
    pub fn set(&self, tenant: &str, policy: TenantPolicy) {
        let policy = Arc::new(policy);
        if let Some(slot) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            slot.store(policy);
            return;
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        match tenants.get(tenant) {
            Some(slot) => slot.store(policy),
            None => {
                tenants.insert(tenant.to_owned(), Arc::new(ArcSwap::new(policy)));
            }
        }
    }

    /// How many tenants have a policy.
    pub fn len(&self) -> usize {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no tenant has a policy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
