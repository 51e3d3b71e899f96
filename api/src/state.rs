//! `AppState`: everything a handler may reach, attached to the app once.

use std::sync::Arc;

use admission::{
    api_keys::ApiKeys, permissions::Permissions, rate_limit::RateLimiter, redis::RedisPool,
    revocation::Revocations, tenants::TenantResolver,
};
use tenancy::{ControlDb, TenantDb};

use identity::{AccessTokens, PasswordHasher};

use crate::{metrics::Metrics, settings::Settings};

/// Shared state of one running app. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub settings: Arc<Settings>,
    /// The control-plane handle (owner of the one shared PostgreSQL pool).
    pub db: ControlDb,
    /// Tenant-scoped transactions on the same pool.
    pub tenant_db: TenantDb,
    /// Resolves the tenant of each request.
    pub tenants: Arc<TenantResolver>,
    /// Redis.
    pub redis: RedisPool,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Issues and verifies access tokens.
    pub tokens: AccessTokens,
    /// Hashes and verifies passwords off the executor.
    pub hasher: PasswordHasher,
    /// Revoked sessions and blocked users.
    pub revocations: Arc<Revocations>,
    /// Tenant API keys' rows, cached briefly, and their last use.
    pub api_keys: Arc<ApiKeys>,
    /// Effective permissions per user, cached.
    pub permissions: Arc<Permissions>,
    /// This instance's live realtime connections.
    pub realtime: Arc<realtime::Hub>,
    /// The general request limits.
    pub rate_limiter: Arc<RateLimiter>,
    /// The object store (S3 bucket).
    pub storage: storage::ObjectStore,
    /// Stripe's API.
    pub stripe: billing::stripe_api::StripeApi,
    /// Webhook event ids this instance stored or saw stored recently: concurrent and
    /// repeated deliveries of one event wait for, or reuse, one database round trip.
    pub recent_webhooks: moka::future::Cache<String, bool>,
}
