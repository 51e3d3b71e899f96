//! Canopy's billing, free of HTTP. So far: the plan catalog ([`PlanCatalog`]), which maps
//! plan names to the limits they set ([`Limits`]) and to the payment provider's price ids.

mod plans;

pub use plans::{FREE_PLAN, Limits, Plan, PlanCatalog, PlanError};
