//! The sandbox: one wasmtime `Engine` (pooling allocator, epoch interruption), a fresh
//! instance per evaluation from an `InstancePre`, a memory limit per store and a deadline
//! per call. Whatever a component does, the caller gets a decision or a `PolicyError`.

use super::bindings::{self, Policy, PolicyPre};
use super::{Compiled, PolicyError, CONTRACT};
use gatehouse_rules as rules;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{
    types::ComponentItem, Component, ComponentExportIndex, Instance, Linker, TypedFunc,
};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, Trap,
};

/// How much a policy may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory per evaluation.
    pub memory_bytes: usize,
    /// Wall-clock deadline per call.
    pub timeout: Duration,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Evaluations that can run at the same moment (pool slots).
    pub concurrent_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 << 20,
            timeout: Duration::from_millis(50),
            max_component_bytes: 8 << 20,
            concurrent_instances: 128,
        }
    }
}

/// Memory kept resident per pool slot between evaluations.
const KEEP_RESIDENT: usize = 2 << 20;

/// How often the epoch advances; a call's deadline is a whole number of ticks.
const TICK: Duration = Duration::from_millis(1);

/// Per-store data: only the resource limiter. The policy gets nothing else.
pub(crate) struct Sandbox {
    limits: StoreLimits,
}

/// The policy engine. Cheap to share (`Arc`); one per process.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<Sandbox>,
    limits: Limits,
    deadline_ticks: u64,
    /// Sandboxes run so far ([`PolicyEngine::runs`]).
    runs: std::sync::atomic::AtomicU64,
    _ticker: Ticker,
}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl PolicyEngine {
    /// Creates the engine and starts its epoch ticker.
    pub fn new(limits: Limits) -> Result<Self, PolicyError> {
        let mut pool = PoolingAllocationConfig::new();
        let slots = limits.concurrent_instances.max(1);
        // A policy component is small: a handful of core instances, one memory, one table.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots)
            .total_tables(slots * 2)
            .max_memory_size(limits.memory_bytes)
            .max_core_instances_per_component(8)
            .table_elements(4096)
            // A decision touches a few pages of stack, data and heap. Resetting just the
            // pages it dirtied (PAGEMAP_SCAN, Linux 6.7+) and keeping them resident saves
            // an madvise and the page faults of the next instance in the slot.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT.min(limits.memory_bytes))
            .table_keep_resident(KEEP_RESIDENT);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_reservation(limits.memory_bytes as u64)
            .memory_reservation_for_growth(0)
            .memory_guard_size(64 << 10)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            // An upload compiles on its one blocking thread: a parallel compile would take
            // every core for a moment, and live decisions, whose deadlines are wall-clock,
            // would time out behind it (seen on 2 cores in the hot-swap test).
            .parallel_compilation(false)
            // Wasm-offset maps only serve backtraces; smaller artifacts load faster.
            .generate_address_map(false);
        let engine = Engine::new(&config).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("policy-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))?
        };
        let deadline_ticks = (limits.timeout.as_micros() / TICK.as_micros()).max(1) as u64 + 1;
        Ok(PolicyEngine {
            linker: Linker::new(&engine),
            engine,
            limits,
            deadline_ticks,
            runs: std::sync::atomic::AtomicU64::new(0),
            _ticker: Ticker {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// The limits this engine enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Identifies the machine code this engine produces; precompiled artifacts are only
    /// reused by an engine with the same key.
    pub fn artifact_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// How many sandboxes (policy calls) this engine has run.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Validates, type-checks and compiles a component: refused when too large, not a
    /// component, importing anything, or implementing another contract version. Runs
    /// `info` in the sandbox, so a component that cannot even say its name is refused.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<Compiled>, PolicyError> {
        if bytes.len() > self.limits.max_component_bytes {
            return Err(PolicyError::TooLarge {
                size: bytes.len(),
                max: self.limits.max_component_bytes,
            });
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        self.prepare(component, sha256(bytes))
    }

    /// Serializes compiled machine code for [`PolicyEngine::load_precompiled_file`].
    pub fn serialize(&self, compiled: &Compiled) -> Result<Vec<u8>, PolicyError> {
        compiled
            .component
            .serialize()
            .map_err(|e| PolicyError::Engine(format!("{e:#}")))
    }

    /// Loads an artifact file made from [`PolicyEngine::serialize`] by an engine with the
    /// same [`artifact_key`](PolicyEngine::artifact_key), without compiling. The file is
    /// mapped, not copied.
    ///
    /// The artifact must come from Gatehouse's own store: it is machine code, trusted as
    /// such. Uploaded bytes always go through [`PolicyEngine::compile`].
    pub fn load_precompiled_file(
        &self,
        path: &std::path::Path,
        sha256: [u8; 32],
    ) -> Result<Arc<Compiled>, PolicyError> {
        // SAFETY: artifact files are only written by the store from `serialize` above, named
        // by this engine's compatibility key (wasmtime checks the header too), and replaced
        // only by rename, never modified in place while mapped.
        let component = unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| PolicyError::Invalid(format!("precompiled artifact unusable: {e:#}")))?;
        self.prepare(component, sha256)
    }

    fn prepare(
        &self,
        component: Component,
        sha256: [u8; 32],
    ) -> Result<Arc<Compiled>, PolicyError> {
        check_world(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        let pre = PolicyPre::new(pre).map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        let info = self.call(&pre, |store, p| {
            p.gatehouse_policy_decide().call_info(store)
        })?;
        let explain_role = component
            .get_export_index(None, super::EXPLAIN_INTERFACE)
            .and_then(|explain| component.get_export_index(Some(&explain), "explain-role"));
        if let Some(index) = &explain_role {
            // Type-checked once here, so a call later cannot fail on the signature.
            self.call_instance(&pre, |store, instance| {
                explain_role_func(store, instance, index).map(|_| ())
            })
            .map_err(|e| {
                PolicyError::Invalid(format!(
                    "{}: explain-role has the wrong type: {e}",
                    super::EXPLAIN_INTERFACE
                ))
            })?;
        }
        let team_name = component
            .get_export_index(None, super::NAMING_INTERFACE)
            .and_then(|naming| component.get_export_index(Some(&naming), "team-name"));
        if let Some(index) = &team_name {
            self.call_instance(&pre, |store, instance| {
                team_name_func(store, instance, index).map(|_| ())
            })
            .map_err(|e| {
                PolicyError::Invalid(format!(
                    "{}: team-name has the wrong type: {e}",
                    super::NAMING_INTERFACE
                ))
            })?;
        }
        Ok(Arc::new(Compiled {
            component,
            pre,
            explain_role,
            team_name,
            sha256,
            info: bindings::policy_info(info),
        }))
    }

    /// Runs `call` on a fresh instance of `compiled` under this engine's limits.
    fn call<R>(
        &self,
        pre: &PolicyPre<Sandbox>,
        call: impl FnOnce(&mut Store<Sandbox>, &Policy) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        self.run(|store| {
            pre.instantiate(&mut *store)
                .and_then(|policy| call(store, &policy))
        })
    }

    /// Runs `call` on a fresh instance, given as a plain instance: for the optional
    /// interfaces the bindings of the required world do not cover.
    fn call_instance<R>(
        &self,
        pre: &PolicyPre<Sandbox>,
        call: impl FnOnce(&mut Store<Sandbox>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        self.run(|store| {
            pre.instance_pre()
                .instantiate(&mut *store)
                .and_then(|instance| call(store, &instance))
        })
    }

    /// A store under this engine's limits, and `run` on it.
    fn run<R>(
        &self,
        run: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, Sandbox { limits });
        store.limiter(|sandbox| &mut sandbox.limits);
        store.set_epoch_deadline(self.deadline_ticks);
        store.epoch_deadline_trap();
        run(&mut store).map_err(|e| self.classify(e))
    }

    fn classify(&self, error: wasmtime::Error) -> PolicyError {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PolicyError::Timeout(self.limits.timeout),
            Some(trap) => PolicyError::Trap(trap.to_string()),
            None => {
                let text = format!("{error:#}");
                if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
                    PolicyError::OutOfMemory(self.limits.memory_bytes)
                } else if text.contains("maximum concurrent") || text.contains("pooling") {
                    PolicyError::Busy
                } else {
                    PolicyError::Trap(text)
                }
            }
        }
    }

    /// Asks the policy whether it accepts `settings`; its refusal message is kept.
    pub fn validate_settings(
        &self,
        compiled: &Compiled,
        settings: &str,
    ) -> Result<Result<(), String>, PolicyError> {
        self.call(&compiled.pre, |store, p| {
            p.gatehouse_policy_decide()
                .call_validate_settings(store, settings)
        })
    }

    /// The login decision, checked for shape.
    pub fn login(
        &self,
        compiled: &Compiled,
        input: &rules::LoginInput,
    ) -> Result<rules::LoginDecision, PolicyError> {
        self.login_with(compiled, input, &input.settings)
    }

    /// The login decision for `input` with `settings` in place of its own.
    pub fn login_with(
        &self,
        compiled: &Compiled,
        input: &rules::LoginInput,
        settings: &str,
    ) -> Result<rules::LoginDecision, PolicyError> {
        let wit_input = bindings::login_input(input, settings);
        let decision = self.call(&compiled.pre, |store, p| {
            p.gatehouse_policy_decide().call_login(store, &wit_input)
        })?;
        let decision = bindings::login_decision(decision);
        super::answer::check_login(input, &decision)?;
        Ok(super::answer::trimmed_login(decision))
    }

    /// The resolution decision, checked for shape (it may only name candidates).
    pub fn resolve(
        &self,
        compiled: &Compiled,
        input: &rules::ResolveInput,
    ) -> Result<rules::ResolveDecision, PolicyError> {
        self.resolve_with(compiled, input, &input.settings)
    }

    /// The resolution decision for `input` with `settings` in place of its own.
    pub fn resolve_with(
        &self,
        compiled: &Compiled,
        input: &rules::ResolveInput,
        settings: &str,
    ) -> Result<rules::ResolveDecision, PolicyError> {
        let wit_input = bindings::resolve_input(input, settings);
        let decision = self.call(&compiled.pre, |store, p| {
            p.gatehouse_policy_decide().call_resolve(store, &wit_input)
        })?;
        let decision = bindings::resolve_decision(decision);
        super::answer::check_resolve(input, &decision)?;
        Ok(super::answer::trimmed_resolve(decision))
    }

    /// Effective roles for `inputs`, one decision per input, in order.
    pub fn effective_role(
        &self,
        compiled: &Compiled,
        inputs: &[rules::RoleInput],
        settings: &str,
    ) -> Result<Vec<rules::RoleDecision>, PolicyError> {
        let wit_inputs: Vec<_> = inputs.iter().map(bindings::role_input).collect();
        let decisions = self.call(&compiled.pre, |store, p| {
            p.gatehouse_policy_decide()
                .call_effective_role(store, &wit_inputs, settings)
        })?;
        if decisions.len() != inputs.len() {
            return Err(PolicyError::Malformed(format!(
                "effective-role answered {} decisions for {} inputs",
                decisions.len(),
                inputs.len()
            )));
        }
        Ok(decisions.into_iter().map(bindings::role_decision).collect())
    }

    /// The policy's trace of a role decision, from the optional `explain` interface of
    /// contract 0.1.1; `None` when the component does not export it (built against 0.1.0).
    pub fn explain_role(
        &self,
        compiled: &Compiled,
        input: &rules::RoleInput,
        settings: &str,
    ) -> Result<Option<Vec<String>>, PolicyError> {
        let Some(index) = &compiled.explain_role else {
            return Ok(None);
        };
        let wit_input = bindings::role_input(input);
        let trace = self.call_instance(&compiled.pre, |store, instance| {
            let func = explain_role_func(store, instance, index)?;
            let (trace,) = func.call(&mut *store, (wit_input, settings))?;
            Ok(trace)
        })?;
        Ok(Some(super::answer::trimmed_trace(trace)))
    }

    /// The team name the policy derives from a group's display name, from the optional
    /// `naming` interface of contract 0.1.2, checked against the team-name rule; `None`
    /// when the component does not export it (built against 0.1.0 or 0.1.1).
    pub fn team_name(
        &self,
        compiled: &Compiled,
        display_name: &str,
        settings: &str,
    ) -> Result<Option<String>, PolicyError> {
        let Some(index) = &compiled.team_name else {
            return Ok(None);
        };
        let name = self.call_instance(&compiled.pre, |store, instance| {
            let func = team_name_func(store, instance, index)?;
            let (name,) = func.call(&mut *store, (display_name, settings))?;
            Ok(name)
        })?;
        if !rules::is_team_name(&name) {
            let shown: String = name.chars().take(80).collect();
            return Err(PolicyError::Malformed(format!(
                "team-name answered {shown:?}, which is not 1-36 of A-Z a-z 0-9 _ -"
            )));
        }
        Ok(Some(name))
    }

    /// Which claims carry user, VA name and teams.
    pub fn claim_mapping(
        &self,
        compiled: &Compiled,
        idp: &rules::IdpClaims,
        settings: &str,
    ) -> Result<rules::ClaimMap, PolicyError> {
        let wit_idp = bindings::idp_claims(idp);
        let map = self.call(&compiled.pre, |store, p| {
            p.gatehouse_policy_decide()
                .call_claim_mapping(store, &wit_idp, settings)
        })?;
        let map = bindings::claim_map(map);
        super::answer::check_claim_map(&map)?;
        Ok(map)
    }
}

type ExplainRole<'a> = TypedFunc<(bindings::wit::RoleInput, &'a str), (Vec<String>,)>;

fn explain_role_func<'a>(
    store: &mut Store<Sandbox>,
    instance: &Instance,
    index: &ComponentExportIndex,
) -> wasmtime::Result<ExplainRole<'a>> {
    instance.get_typed_func(store, index)
}

type TeamNameFunc<'a> = TypedFunc<(&'a str, &'a str), (String,)>;

fn team_name_func<'a>(
    store: &mut Store<Sandbox>,
    instance: &Instance,
    index: &ComponentExportIndex,
) -> wasmtime::Result<TeamNameFunc<'a>> {
    instance.get_typed_func(store, index)
}

/// A policy imports nothing and exports `gatehouse:policy/decide` at a version compatible
/// with [`CONTRACT`] (same major, and same minor while the major is 0).
fn check_world(engine: &Engine, component: &Component) -> Result<(), PolicyError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if !imports.is_empty() {
        return Err(PolicyError::Imports(imports));
    }
    let mut found = Vec::new();
    for (name, item) in ty.exports(engine) {
        let Some(version) = name.strip_prefix("gatehouse:policy/decide@") else {
            continue;
        };
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        if compatible(version, CONTRACT) {
            return Ok(());
        }
        found.push(version.to_owned());
    }
    match found.first() {
        Some(version) => Err(PolicyError::Contract { found: version.clone() }),
        None => Err(PolicyError::Invalid(format!(
            "the component does not export gatehouse:policy/decide (this host implements gatehouse:policy@{CONTRACT})"
        ))),
    }
}

/// Semver compatibility of `found` with the host's `ours`.
fn compatible(found: &str, ours: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(found), parse(ours)) {
        (Some((0, minor)), Some((0, our_minor))) => minor == our_minor,
        (Some((major, _)), Some((our_major, _))) => major == our_major,
        _ => false,
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn contract_compatibility_follows_semver() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }
}
