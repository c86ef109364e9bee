//! Decision cases run natively through a [`Policy`], across the WIT conversions.

use crate::convert::Wire;
use crate::wit::Guest;
use crate::{
    ClaimMap, IdpClaims, LoginDecision, LoginInput, Policy, ResolveDecision, ResolveInput,
    RoleDecision, RoleInput,
};
use gatehouse_rules::cases::Evaluator;
use std::convert::Infallible;
use std::marker::PhantomData;

/// Runs a policy natively for [`gatehouse_rules::cases`]: each input is converted to its
/// WIT form and each answer back, exactly as in the component, so the cases a policy
/// passes here it passes in Wasm too (fuel and memory limits aside).
///
/// ```no_run
/// # use gatehouse_policy_sdk::{Policy, PolicyEvaluator, PolicyInfo};
/// # struct MyPolicy;
/// # impl Policy for MyPolicy {
/// #     fn info() -> PolicyInfo { gatehouse_policy_sdk::info("mine", "0.1.0") }
/// # }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cases = gatehouse_rules::cases::load_dir("cases".as_ref())?;
/// let mut policy = PolicyEvaluator::<MyPolicy>::new();
/// for (file, case) in &cases {
///     assert!(case.run(&mut policy).passed, "{file}: {}", case.name);
/// }
/// # Ok(())
/// # }
/// ```
pub struct PolicyEvaluator<P>(PhantomData<fn() -> P>);

impl<P: Policy> PolicyEvaluator<P> {
    /// An evaluator for `P`.
    pub fn new() -> Self {
        PolicyEvaluator(PhantomData)
    }
}

impl<P: Policy> Default for PolicyEvaluator<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Policy> Evaluator for PolicyEvaluator<P> {
    type Error = Infallible;

    fn login(&mut self, input: &LoginInput) -> Result<LoginDecision, Infallible> {
        Ok(<P as Guest>::login(input.clone().wire()).wire())
    }

    fn resolve(&mut self, input: &ResolveInput) -> Result<ResolveDecision, Infallible> {
        Ok(<P as Guest>::resolve(input.clone().wire()).wire())
    }

    fn effective_role(
        &mut self,
        inputs: &[RoleInput],
        settings: &str,
    ) -> Result<Vec<RoleDecision>, Infallible> {
        Ok(<P as Guest>::effective_role(inputs.wire(), settings.to_owned()).wire())
    }

    fn claim_mapping(&mut self, idp: &IdpClaims, settings: &str) -> Result<ClaimMap, Infallible> {
        Ok(<P as Guest>::claim_mapping(idp.clone().wire(), settings.to_owned()).wire())
    }

    fn validate_settings(&mut self, settings: &str) -> Result<Result<(), String>, Infallible> {
        Ok(<P as Guest>::validate_settings(settings.to_owned()))
    }
}
