//! Canopy's billing, free of HTTP: the plan catalog ([`PlanCatalog`]) mapping plan names to
//! the limits they set ([`Limits`]) and to the provider's price ids; webhook signatures
//! ([`signature`]); the inbox of webhook events ([`inbox`]); and each tenant's billing
//! account, driven by subscription events ([`accounts`], [`events`]); the jobs applying
//! stored events ([`processing`]) and catching undelivered ones ([`reconcile`]); the plan
//! limits on products and seats ([`limits`]); the prune of processed events ([`retention`]); and the calls made to Stripe's API
//! ([`stripe_api`]).

pub mod accounts;
pub mod events;
pub mod inbox;
pub mod limits;
mod plans;
pub mod processing;
pub mod reconcile;
pub mod retention;
pub mod signature;
pub mod stripe_api;

pub use plans::{FREE_PLAN, Limits, Plan, PlanCatalog, PlanError};
