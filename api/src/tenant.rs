//! Tenant resolution for every tenant-scoped request.
//!
//! The tenant comes from the subdomain of `CANOPY_BASE_DOMAIN`, else from the `X-Tenant`
//! header (slug or id). Lookups are cached in process; any change to a tenant is published
//! on Redis and every instance drops its cache, so a suspension takes effect everywhere
//! within a second. The cache's TTL bounds staleness while Redis is unreachable.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use moka::sync::Cache;
use poem::{Request, RequestBody};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, registry::Registry};
use secrecy::ExposeSecret;
use tenancy::{ControlDb, Tenant, TenantId, TenantSlug, TenantStatus, TenantTx};
use tokio::sync::{broadcast, watch};

use crate::{
    AppState,
    error::{ApiError, ErrorCode},
};

/// Redis channel announcing that some tenant changed.
pub const TENANT_CHANGES_CHANNEL: &str = "canopy:tenants:changed";

/// The header naming the tenant when no subdomain does.
pub const TENANT_HEADER: &str = "x-tenant";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TenantKey {
    Id(TenantId),
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
    /// A resolver reading `control`, caching entries for `ttl`.
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

    /// The tenant `request` addresses, which must be active.
    pub async fn resolve(&self, request: &Request) -> Result<Arc<Tenant>, ApiError> {
        let from_host = self.subdomain(request);
        let from_header = request
            .headers()
            .get(TENANT_HEADER)
            .map(|v| v.to_str().map(str::trim).unwrap_or_default());
        let tenant = match (from_host, from_header) {
            (Some(sub), header) => {
                let tenant = self.lookup(TenantKey::Slug(sub)).await?;
                if let Some(header) = header {
                    let other = self.lookup(parse_reference(header)?).await?;
                    if other.id != tenant.id {
                        return Err(ApiError::new(
                            ErrorCode::TenantMismatch,
                            "The subdomain and the X-Tenant header name different tenants.",
                        ));
                    }
                }
                tenant
            }
            (None, Some(header)) => self.lookup(parse_reference(header)?).await?,
            (None, None) => {
                let how = match &self.base_domain {
                    Some(domain) => format!("a subdomain of {domain} or the X-Tenant header"),
                    None => "the X-Tenant header (slug or id)".to_owned(),
                };
                return Err(ApiError::new(
                    ErrorCode::TenantRequired,
                    format!("This operation is tenant-scoped: name the tenant with {how}."),
                ));
            }
        };
        match tenant.status {
            TenantStatus::Active => Ok(tenant),
            TenantStatus::Suspended => Err(ApiError::new(
                ErrorCode::TenantSuspended,
                "This tenant is suspended; contact the platform operator.",
            )),
            TenantStatus::Deleted => Err(not_found()),
        }
    }

    /// The leftmost label of the host when the host is a direct subdomain of the base
    /// domain and a valid slug.
    fn subdomain(&self, request: &Request) -> Option<String> {
        let base = self.base_domain.as_deref()?;
        let host = request
            .headers()
            .get(poem::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())?;
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let label = host.strip_suffix(base)?.strip_suffix('.')?;
        TenantSlug::parse(label).ok().map(|s| s.as_str().to_owned())
    }

    async fn lookup(&self, key: TenantKey) -> Result<Arc<Tenant>, ApiError> {
        if let Some(cached) = self.cache.get(&key) {
            return cached.ok_or_else(not_found);
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
        found.ok_or_else(not_found)
    }
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::TenantNotFound, "No tenant by that name.")
}

/// `X-Tenant` holds an id or a slug; anything else cannot name a tenant.
fn parse_reference(raw: &str) -> Result<TenantKey, ApiError> {
    if let Ok(id) = uuid::Uuid::parse_str(raw) {
        return Ok(TenantKey::Id(TenantId(id)));
    }
    TenantSlug::parse(&raw.to_ascii_lowercase())
        .map(|s| TenantKey::Slug(s.as_str().to_owned()))
        .map_err(|_| not_found())
}

/// Tells every instance (this one included) that a tenant changed. Best effort: when
/// Redis is down the caches' TTL bounds the staleness.
pub async fn publish_change(state: &AppState, tenant: TenantId) {
    let published = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
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
    state.tenants.invalidate_all();
}

/// Plan changes from Stripe events reach the caches the way every other change does.
impl billing::processing::TenantChanges for AppState {
    fn changed(&self, tenant: TenantId) -> tenancy::BoxFuture<'_, ()> {
        Box::pin(publish_change(self, tenant))
    }
}

/// Listens for tenant changes until `stop` completes, reconnecting after failures. Every
/// (re)connection drops the cache too: messages may have been missed while away.
pub async fn listen_for_changes(state: AppState, stop: impl Future<Output = ()>) {
    // Handling a message is synchronous, so leaving at any await point loses nothing.
    tokio::select! {
        () = stop => {}
        () = listen(state) => {}
    }
}

async fn listen(state: AppState) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = async {
            let client = redis::Client::open(state.settings.redis.url.expose_secret())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(TENANT_CHANGES_CHANNEL).await?;
            state.tenants.invalidate_all();
            state.tenants.listening.send_replace(true);
            tracing::debug!("listening for tenant changes");
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                state.tenants.invalidate_all();
                let tenant = message
                    .get_payload::<String>()
                    .ok()
                    .and_then(|p| uuid::Uuid::parse_str(&p).ok());
                if let Some(tenant) = tenant {
                    let _ = state.tenants.announced.send(TenantId(tenant));
                }
            }
            redis::RedisResult::Ok(())
        }
        .await;
        state.tenants.listening.send_replace(false);
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(error) => tracing::warn!(%error, "tenant change listener lost Redis; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The optional header parameter naming the tenant, as the OpenAPI document declares it
/// on every tenant-scoped operation. It is declared here once: `routes::openapi_json`
/// adds it to each operation whose extractor is tenant-scoped ([`CurrentTenant`], or the
/// user extractors of [`crate::auth`], which resolve the tenant themselves).
pub fn tenant_parameter() -> serde_json::Value {
    serde_json::json!({
        "name": "X-Tenant",
        "schema": { "type": "string" },
        "in": "header",
        "description": "Tenant slug or id, when the host is not the tenant's subdomain.",
        "required": false,
        "deprecated": false,
        "explode": true
    })
}

/// The security requirement [`CurrentTenant`] names in the raw document: not a scheme, a
/// mark telling `routes::openapi_json` that the operation is tenant-scoped. It is removed
/// there and replaced by the [`tenant_parameter`].
pub const TENANT_SCOPED: &str = "X-Tenant";

/// The tenant a public tenant-scoped request addresses (registration, login, recovery…),
/// resolved before the handler runs. Operations with a signed-in user get the tenant from
/// their user extractor instead ([`crate::auth::Principal::tenant`]), so each request
/// resolves its tenant once. Documented as the optional `X-Tenant` header.
#[derive(Debug, Clone)]
pub struct CurrentTenant(pub Arc<Tenant>);

impl CurrentTenant {
    /// Resolves the tenant `request` addresses and records it on the request span.
    pub(crate) async fn resolve(request: &Request) -> Result<Arc<Tenant>, ApiError> {
        let state = request
            .data::<AppState>()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not attached")))?;
        let tenant = state.tenants.resolve(request).await?;
        tracing::Span::current().record("tenant_id", tracing::field::display(tenant.id));
        Ok(tenant)
    }

    /// Opens the tenant's transaction. Commit it explicitly: dropped, it rolls back.
    pub async fn begin(&self, state: &AppState) -> Result<TenantTx, ApiError> {
        Ok(state.tenant_db.begin(self.0.id).await?)
    }
}

impl<'a> ApiExtractor<'a> for CurrentTenant {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    /// Nothing to register: the mark is not a scheme of the document.
    fn register(_registry: &mut Registry) {}

    fn security_schemes() -> Vec<&'static str> {
        vec![TENANT_SCOPED]
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(Self(Self::resolve(request).await?))
    }
}
