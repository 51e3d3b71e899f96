//! The tenant cache behind tenant resolution, kept coherent across instances.
//!
//! Lookups by id or slug are cached in process; any change to a tenant is published on
//! Redis ([`TENANT_CHANGES_CHANNEL`], [`publish_change`]) and every instance's listener
//! ([`listen_for_changes`]) drops its cache, so a suspension takes effect everywhere
//! within a second. The cache's TTL bounds staleness while Redis is unreachable. Working
//! out which tenant a request names (subdomain, `X-Tenant` header) is HTTP and stays in
//! `api`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use moka::sync::Cache;
use secrecy::{ExposeSecret, SecretString};
use tenancy::{ControlDb, Tenant, TenantId, TenantSlug};
use tokio::sync::{broadcast, watch};

use crate::{AdmissionError, redis::RedisPool};

/// Redis channel announcing that some tenant changed.
pub const TENANT_CHANGES_CHANNEL: &str = "canopy:tenants:changed";

/// How a request names a tenant: by id or by (lowercase) slug.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantKey {
    /// By id.
    Id(TenantId),
    /// By slug (not necessarily a valid one: an invalid slug names no tenant).
    Slug(String),
}

/// Resolves tenants with an in-process cache kept coherent across instances.
pub struct TenantResolver {
    control: ControlDb,
    base_domain: Option<String>,
    cache: Cache<TenantKey, Option<Arc<Tenant>>>,
    /// Bumped by every invalidation: a lookup that raced one does not cache its result.
    generation: AtomicU64,
    announced: broadcast::Sender<TenantId>,
    listening: watch::Sender<bool>,
}

impl TenantResolver {
    /// A resolver reading `control`, caching entries for `ttl`; tenants are also named by
    /// subdomains of `base_domain`, when set.
    pub fn new(control: ControlDb, base_domain: Option<String>, ttl: Duration) -> Self {
        Self {
            control,
            base_domain,
            // Bounded, so a flood of made-up tenant names cannot grow it without limit.
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            generation: AtomicU64::new(0),
            announced: broadcast::channel(64).0,
            listening: watch::channel(false).0,
        }
    }

    /// The domain whose direct subdomains name tenants, when set.
    pub fn base_domain(&self) -> Option<&str> {
        self.base_domain.as_deref()
    }

    /// Forgets every cached tenant.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// Completes once this instance is subscribed to tenant changes.
    pub async fn listening(&self) {
        let mut listening = self.listening.subscribe();
        let _ = listening.wait_for(|on| *on).await;
    }

    /// Tenants whose change this instance has heard of over Redis (tests wait on it).
    pub fn announcements(&self) -> broadcast::Receiver<TenantId> {
        self.announced.subscribe()
    }

    /// The tenant `key` names, whatever its status ([`AdmissionError::TenantNotFound`]
    /// when there is none), from the cache or the control plane.
    pub async fn lookup(&self, key: TenantKey) -> Result<Arc<Tenant>, AdmissionError> {
        if let Some(cached) = self.cache.get(&key) {
            return cached.ok_or(AdmissionError::TenantNotFound);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = match &key {
            TenantKey::Id(id) => self.control.tenant_by_id(*id).await?,
            TenantKey::Slug(slug) => match TenantSlug::parse(slug) {
                Ok(slug) => self.control.tenant_by_slug(&slug).await?,
                Err(_) => None,
            },
        }
        .map(Arc::new);
        // Read before an invalidation that happened meanwhile: may be stale, do not keep it.
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache.insert(key, found.clone());
        }
        found.ok_or(AdmissionError::TenantNotFound)
    }
}

/// `X-Tenant` holds an id or a slug; anything else cannot name a tenant.
pub fn parse_reference(raw: &str) -> Result<TenantKey, AdmissionError> {
    if let Ok(id) = uuid::Uuid::parse_str(raw) {
        return Ok(TenantKey::Id(TenantId(id)));
    }
    TenantSlug::parse(&raw.to_ascii_lowercase())
        .map(|s| TenantKey::Slug(s.as_str().to_owned()))
        .map_err(|_| AdmissionError::TenantNotFound)
}

/// Tells every instance (this one included, through `tenants`) that a tenant changed.
/// Best effort: when Redis is down the caches' TTL bounds the staleness.
pub async fn publish_change(redis: &RedisPool, tenants: &TenantResolver, tenant: TenantId) {
    let published = async {
        let mut conn = redis.get().await.map_err(|e| e.to_string())?;
        redis::cmd("PUBLISH")
            .arg(TENANT_CHANGES_CHANNEL)
            .arg(tenant.to_string())
            .query_async::<i64>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(error) = published.await {
        tracing::warn!(%tenant, %error, "could not publish a tenant change; other instances catch up within the cache TTL");
    }
    // Never rely on the round trip for this instance.
    tenants.invalidate_all();
}

/// Listens for tenant changes on the Redis at `redis_url` until `stop` completes,
/// reconnecting after failures, and drops `tenants`' cache on each. Every (re)connection
/// drops the cache too: messages may have been missed while away.
pub async fn listen_for_changes(
    redis_url: SecretString,
    tenants: Arc<TenantResolver>,
    stop: impl Future<Output = ()>,
) {
    // Handling a message is synchronous, so leaving at any await point loses nothing.
    tokio::select! {
        () = stop => {}
        () = listen(&redis_url, &tenants) => {}
    }
}

async fn listen(redis_url: &SecretString, tenants: &TenantResolver) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = async {
            let client = redis::Client::open(redis_url.expose_secret())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(TENANT_CHANGES_CHANNEL).await?;
            tenants.invalidate_all();
            tenants.listening.send_replace(true);
            tracing::debug!("listening for tenant changes");
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                tenants.invalidate_all();
                let tenant = message
                    .get_payload::<String>()
                    .ok()
                    .and_then(|p| uuid::Uuid::parse_str(&p).ok());
                if let Some(tenant) = tenant {
                    let _ = tenants.announced.send(TenantId(tenant));
                }
            }
            redis::RedisResult::Ok(())
        }
        .await;
        tenants.listening.send_replace(false);
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(error) => tracing::warn!(%error, "tenant change listener lost Redis; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
