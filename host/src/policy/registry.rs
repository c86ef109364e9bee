//! Which policy each tenant runs, swapped atomically.
//!
//! A request takes an `Arc<TenantPolicy>` once and uses it to the end, so a swap never
//! changes the policy under a request in flight: in-flight requests finish on the version
//! they started with, new ones see the new version, and nothing fails in between.

use super::ring::{DecisionRing, RecordedInput};
use super::shadow::Shadow;
use super::{Compiled, PolicyEngine, PolicyError};
use arc_swap::ArcSwap;
use arc_swap::ArcSwapOption;
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
    /// A tenant has few IdPs; the bound only stops a pathological caller.
    claim_maps: Memo<rules::IdpClaims, rules::ClaimMap>,
    /// A manual role and the roles of a user's teams: few distinct ones per tenant.
    roles: Memo<rules::RoleInput, rules::RoleDecision>,
    /// The tenant's decision ring and shadow, set when the registry installs this policy; a
    /// policy outside the registry (a dry-run or shadow candidate) records nothing.
    side: Option<Arc<TenantSide>>,
    /// Failures of this version since it was installed (automatic rollback).
    health: Health,
}

/// When a newly active version is rolled back on its own: `max_failures` failed decisions
/// (traps, timeouts, out-of-memory, malformed answers) within `window` of its activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoRollback {
    pub max_failures: u32,
    pub window: std::time::Duration,
}

/// Why a version tripped automatic rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub version: u64,
    pub failures: u32,
    pub last_error: String,
}

struct Health {
    since: std::time::Instant,
    failures: std::sync::atomic::AtomicU32,
    tripped: std::sync::atomic::AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            since: std::time::Instant::now(),
            failures: Default::default(),
            tripped: Default::default(),
        }
    }
}

/// Answers a policy version gave, by input. A policy imports nothing and each call gets a
/// fresh instance, so it is a function of its input and settings: an answer once given is
/// the version's answer (decision 84). Failures are never remembered. Past `cap` entries
/// nothing more is remembered; the bound only stops a pathological caller.
struct Memo<K, V> {
    answers: RwLock<HashMap<K, V>>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Memo<K, V> {
    fn new(cap: usize) -> Self {
        Memo {
            answers: RwLock::default(),
            cap,
        }
    }

    fn get(&self, input: &K) -> Option<V> {
        let answers = self.answers.read().unwrap_or_else(|p| p.into_inner());
        answers.get(input).cloned()
    }

    fn remember(&self, input: K, answer: V) {
        let mut answers = self.answers.write().unwrap_or_else(|p| p.into_inner());
        if answers.len() < self.cap {
            answers.insert(input, answer);
        }
    }
}

impl TenantPolicy {
    /// A usable policy.
    pub fn new(version: Option<u64>, compiled: Arc<Compiled>, settings: Arc<str>) -> Self {
        TenantPolicy {
            version,
            settings,
            compiled: Ok(compiled),
            claim_maps: Memo::new(1024),
            roles: Memo::new(4096),
            side: None,
            health: Health::default(),
        }
    }

    /// A policy that could not be loaded: every decision fails closed with `reason`.
    pub fn unavailable(version: Option<u64>, settings: Arc<str>, reason: String) -> Self {
        TenantPolicy {
            version,
            settings,
            compiled: Err(reason),
            claim_maps: Memo::new(1024),
            roles: Memo::new(4096),
            side: None,
            health: Health::default(),
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
        let recorded = self.record(|ring| ring.anonymise_login(input));
        let decision = self.note(engine.login_with(self.compiled()?, input, &self.settings))?;
        self.offer_shadow(recorded, || Outcome::Login(decision.outcome.clone()));
        Ok(decision)
    }

    /// The resolution decision with this tenant's settings.
    pub fn resolve(
        &self,
        engine: &PolicyEngine,
        input: &rules::ResolveInput,
    ) -> Result<rules::ResolveDecision, PolicyError> {
        let recorded = self.record(|ring| ring.anonymise_resolve(input));
        let decision = self.note(engine.resolve_with(self.compiled()?, input, &self.settings))?;
        self.offer_shadow(recorded, || Outcome::Resolve(decision.outcome.clone()));
        Ok(decision)
    }

    /// Records a decision input in the tenant's ring (anonymised, allocated once: the
    /// shadow gets the same `Arc`).
    fn record(
        &self,
        anonymise: impl FnOnce(&DecisionRing) -> RecordedInput,
    ) -> Option<(&TenantSide, Arc<RecordedInput>)> {
        self.side.as_ref().map(|side| {
            let recorded = Arc::new(anonymise(&side.ring));
            side.ring.push(recorded.clone());
            (&**side, recorded)
        })
    }

    /// Hands a decided input to the tenant's shadow, if one runs: a push onto its queue.
    fn offer_shadow(
        &self,
        recorded: Option<(&TenantSide, Arc<RecordedInput>)>,
        active: impl FnOnce() -> Outcome,
    ) {
        if let Some((side, recorded)) = recorded {
            if let Some(shadow) = side.shadow.load().as_ref() {
                shadow.offer(recorded, active());
            }
        }
    }

    /// The resolution decision with this tenant's settings, for an explanation: nothing
    /// is recorded (decision ring, shadow) and a failure does not count toward automatic
    /// rollback, since no real request was decided.
    pub fn explain_resolve(
        &self,
        engine: &PolicyEngine,
        input: &rules::ResolveInput,
    ) -> Result<rules::ResolveDecision, PolicyError> {
        engine.resolve_with(self.compiled()?, input, &self.settings)
    }

    /// An effective-role decision with this tenant's settings, and the policy's trace of
    /// it when the component offers one, for an explanation (counted nowhere).
    pub fn explain_role(
        &self,
        engine: &PolicyEngine,
        input: &rules::RoleInput,
    ) -> Result<RoleExplanation, PolicyError> {
        let compiled = self.compiled()?;
        let mut decisions =
            engine.effective_role(compiled, std::slice::from_ref(input), &self.settings)?;
        Ok(RoleExplanation {
            decision: decisions.remove(0),
            trace: engine.explain_role(compiled, input, &self.settings)?,
        })
    }

    /// Decides a recorded input with this policy and its settings, without recording it;
    /// the outcome as JSON (the trace is left out: a dry run compares decisions).
    pub fn decide_recorded(
        &self,
        engine: &PolicyEngine,
        recorded: &RecordedInput,
    ) -> Result<serde_json::Value, PolicyError> {
        self.decide_outcome(engine, recorded)?.to_json()
    }

    /// Decides a recorded input with this policy and its settings, without recording it.
    pub(super) fn decide_outcome(
        &self,
        engine: &PolicyEngine,
        recorded: &RecordedInput,
    ) -> Result<Outcome, PolicyError> {
        let compiled = self.compiled()?;
        Ok(match recorded {
            RecordedInput::Login(input) => {
                Outcome::Login(engine.login_with(compiled, input, &self.settings)?.outcome)
            }
            RecordedInput::Resolve(input) => Outcome::Resolve(
                engine
                    .resolve_with(compiled, input, &self.settings)?
                    .outcome,
            ),
        })
    }

    /// Effective roles, one per input. The policy is asked only about inputs this version
    /// has not answered ([`Memo`]), each distinct one once (decision 84).
    pub fn effective_role(
        &self,
        engine: &PolicyEngine,
        inputs: &[rules::RoleInput],
    ) -> Result<Vec<rules::RoleDecision>, PolicyError> {
        // Each distinct input, with this version's decision when it is known.
        let mut decided: HashMap<rules::RoleInput, Option<rules::RoleDecision>> = HashMap::new();
        for input in inputs {
            if !decided.contains_key(input) {
                decided.insert(input.clone(), self.roles.get(input));
            }
        }
        let asked: Vec<rules::RoleInput> = decided
            .iter()
            .filter(|(_, decision)| decision.is_none())
            .map(|(input, _)| input.clone())
            .collect();
        if !asked.is_empty() {
            let answers =
                self.note(engine.effective_role(self.compiled()?, &asked, &self.settings))?;
            for (input, decision) in asked.into_iter().zip(answers) {
                self.roles.remember(input.clone(), decision);
                decided.insert(input, Some(decision));
            }
        }
        // The engine checked that every input was answered.
        inputs
            .iter()
            .map(|input| {
                decided.get(input).copied().flatten().ok_or_else(|| {
                    PolicyError::Engine("an effective role went undecided".to_owned())
                })
            })
            .collect()
    }

    /// The team name for a group's display name: the policy's `naming` answer (contract
    /// 0.1.2), or the default rule when the component predates it. Not made unique: that is
    /// the caller's part.
    pub fn team_name(
        &self,
        engine: &PolicyEngine,
        display_name: &str,
    ) -> Result<String, PolicyError> {
        let answer = self.note(engine.team_name(self.compiled()?, display_name, &self.settings))?;
        Ok(answer.unwrap_or_else(|| rules::team_name(display_name)))
    }

    /// Counts a failed decision of a stored version toward automatic rollback, and trips it
    /// (once) when the tenant's threshold is reached within the window.
    fn note<T>(&self, result: Result<T, PolicyError>) -> Result<T, PolicyError> {
        use std::sync::atomic::Ordering;
        let Err(error) = &result else {
            return result;
        };
        let counts = matches!(
            error,
            PolicyError::Trap(_)
                | PolicyError::Timeout(_)
                | PolicyError::OutOfMemory(_)
                | PolicyError::Malformed(_)
        );
        let (Some(side), Some(version)) = (&self.side, self.version) else {
            return result;
        };
        let Some(auto) = side.auto_rollback else {
            return result;
        };
        if !counts || self.health.since.elapsed() > auto.window {
            return result;
        }
        let failures = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= auto.max_failures && !self.health.tripped.swap(true, Ordering::Relaxed) {
            let mut trip = side.trip.lock().unwrap_or_else(|p| p.into_inner());
            if trip.is_none() {
                side.trips_waiting.fetch_add(1, Ordering::Relaxed);
            }
            *trip = Some(Trip {
                version,
                failures,
                last_error: error.to_string(),
            });
        }
        result
    }

    /// The claim map for an identity provider; asked once per policy version and IdP,
    /// since it depends on nothing else.
    pub fn claim_mapping(
        &self,
        engine: &PolicyEngine,
        idp: &rules::IdpClaims,
    ) -> Result<rules::ClaimMap, PolicyError> {
        if let Some(map) = self.claim_maps.get(idp) {
            return Ok(map);
        }
        let map = self.note(engine.claim_mapping(self.compiled()?, idp, &self.settings))?;
        self.claim_maps.remember(idp.clone(), map.clone());
        Ok(map)
    }
}

/// A decision's outcome, without its trace: what a dry run and a shadow compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Login(rules::LoginOutcome),
    Resolve(rules::Resolution),
}

impl Outcome {
    /// The outcome as JSON (for reports and logs).
    pub(super) fn to_json(&self) -> Result<serde_json::Value, PolicyError> {
        match self {
            Outcome::Login(o) => serde_json::to_value(o),
            Outcome::Resolve(o) => serde_json::to_value(o),
        }
        .map_err(|e| PolicyError::Engine(format!("a decision is not JSON: {e}")))
    }
}

/// An effective-role decision with the policy's trace of it (`None`: the component was
/// built against a contract without the `explain` interface).
#[derive(Debug, Clone)]
pub struct RoleExplanation {
    pub decision: rules::RoleDecision,
    pub trace: Option<Vec<String>>,
}

/// What a tenant keeps across policy swaps: its decision ring and its shadow candidate.
struct TenantSide {
    ring: DecisionRing,
    shadow: ArcSwapOption<Shadow>,
    auto_rollback: Option<AutoRollback>,
    /// A version that tripped automatic rollback, waiting for the app to act.
    trip: std::sync::Mutex<Option<Trip>>,
    /// The registry's count of trips waiting, shared by every tenant's side.
    trips_waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// How many recent decision inputs each tenant's ring keeps.
pub const RING_CAPACITY: usize = 256;

/// Every tenant's current policy, and each tenant's decision ring (which outlives swaps).
#[derive(Default)]
pub struct Registry {
    tenants: RwLock<HashMap<String, Arc<ArcSwap<TenantPolicy>>>>,
    sides: RwLock<HashMap<String, Arc<TenantSide>>>,
    auto_rollback: Option<AutoRollback>,
    /// Trips waiting in any tenant's side: the check after every decision is one atomic
    /// load while this is zero, as it almost always is.
    trips_waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Registry {
    /// The tenant's current policy, if the tenant is known.
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantPolicy>> {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.get(tenant).map(|slot| slot.load_full())
    }

    fn side(&self, tenant: &str) -> Arc<TenantSide> {
        if let Some(side) = self
            .sides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return side.clone();
        }
        self.sides
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(TenantSide {
                    ring: DecisionRing::new(RING_CAPACITY),
                    shadow: ArcSwapOption::empty(),
                    auto_rollback: self.auto_rollback,
                    trip: std::sync::Mutex::new(None),
                    trips_waiting: self.trips_waiting.clone(),
                })
            })
            .clone()
    }

    /// A registry whose tenants' new versions roll back on their own (`None`: never).
    pub fn with_auto_rollback(auto_rollback: Option<AutoRollback>) -> Registry {
        Registry {
            auto_rollback,
            ..Registry::default()
        }
    }

    /// The automatic-rollback rule.
    pub fn auto_rollback(&self) -> Option<AutoRollback> {
        self.auto_rollback
    }

    /// Takes the tenant's pending automatic-rollback trip, if a version tripped.
    pub fn take_trip(&self, tenant: &str) -> Option<Trip> {
        if self
            .trips_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            return None;
        }
        let side = self
            .sides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()?;
        let trip = side.trip.lock().unwrap_or_else(|p| p.into_inner()).take();
        if trip.is_some() {
            self.trips_waiting
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        trip
    }

    /// The tenant's recent decision inputs (anonymised), oldest first.
    pub fn recent(&self, tenant: &str) -> Vec<RecordedInput> {
        self.side(tenant).ring.snapshot()
    }

    /// The tenant's shadow candidate, if one runs.
    pub fn shadow(&self, tenant: &str) -> Option<Arc<Shadow>> {
        self.side(tenant).shadow.load_full()
    }

    /// Starts (`Some`) or stops (`None`) the tenant's shadow; returns the one it replaced.
    pub fn set_shadow(&self, tenant: &str, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        self.side(tenant).shadow.swap(shadow)
    }

    /// Makes `policy` the tenant's current one, atomically; it records into the tenant's
    /// decision ring.
    pub fn set(&self, tenant: &str, mut policy: TenantPolicy) {
        policy.side = Some(self.side(tenant));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Limits, DEFAULT_POLICY};
    use rules::{Role, RoleInput, RoleSource};

    /// A version answers each distinct role input once: repeated inputs in a call, and
    /// inputs answered by an earlier call, cost no sandbox; the answers are the policy's.
    #[test]
    fn a_version_asks_its_policy_about_each_role_input_once() {
        let engine = PolicyEngine::new(Limits::default()).unwrap();
        let compiled = engine.compile(DEFAULT_POLICY).unwrap();
        let policy = TenantPolicy::new(Some(1), compiled.clone(), Arc::from("{}"));
        let member = RoleInput::default();
        let admin = RoleInput {
            manual: None,
            team_roles: vec![Role::Admin],
        };
        let manual = RoleInput {
            manual: Some(Role::Member),
            team_roles: vec![Role::Admin],
        };
        let expected = |inputs: &[RoleInput]| {
            engine
                .effective_role(&compiled, inputs, "{}")
                .expect("the policy decides")
        };
        let batch = vec![member.clone(), admin.clone(), member.clone(), admin.clone()];
        let want = expected(&batch);
        assert_eq!(want[1].role, Role::Admin);
        assert_eq!(want[1].source, RoleSource::Group);

        let before = engine.runs();
        assert_eq!(policy.effective_role(&engine, &batch).unwrap(), want);
        assert_eq!(
            engine.runs() - before,
            1,
            "one call for the batch's two inputs"
        );

        let before = engine.runs();
        assert_eq!(
            policy
                .effective_role(&engine, &[admin.clone(), member.clone()])
                .unwrap(),
            expected(&[admin.clone(), member.clone()])
        );
        let between = engine.runs();
        assert_eq!(between - before, 1, "only the expectation ran the policy");

        // A new input is asked about (alone); a new version remembers nothing.
        let mixed = [manual.clone(), admin.clone()];
        assert_eq!(
            policy.effective_role(&engine, &mixed).unwrap(),
            expected(&mixed)
        );
        assert_eq!(
            engine.runs() - between,
            2,
            "the new input and the expectation"
        );
        let next = TenantPolicy::new(Some(2), compiled.clone(), Arc::from("{}"));
        let before = engine.runs();
        next.effective_role(&engine, &[admin]).unwrap();
        assert_eq!(engine.runs() - before, 1);
    }
}
