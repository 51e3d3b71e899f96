//! Files, apart from HTTP: their records and usage ([`store`]) and the jobs that process
//! and remove their objects ([`jobs`]). The endpoints are in `routes::files`.

pub mod jobs;
pub mod store;
