//! Tenant resolution for every tenant-scoped request: the HTTP half.
//!
//! The tenant comes from the subdomain of `CANOPY_BASE_DOMAIN`, else from the `X-Tenant`
//! header (slug or id); [`resolve`] reads them off the request and maps the tenant's
//! status to its problem. The lookups, their in-process cache and its coherence across
//! instances (a change is published on Redis and every instance drops its cache) live in
//! [`admission::tenants`]; [`publish_change`] and [`listen_for_changes`] hand them the
//! app's Redis.

use std::sync::Arc;

pub use admission::tenants::{TENANT_CHANGES_CHANNEL, TenantResolver};
use admission::{
    AdmissionError,
    tenants::{TenantKey, parse_reference},
};
use poem::{Request, RequestBody};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, registry::Registry};
use tenancy::{Tenant, TenantId, TenantSlug, TenantStatus, TenantTx};

use crate::{
    AppState,
    error::{ApiError, ErrorCode},
};

/// The header naming the tenant when no subdomain does.
pub const TENANT_HEADER: &str = "x-tenant";

/// The tenant `request` addresses, which must be active.
pub async fn resolve(tenants: &TenantResolver, request: &Request) -> Result<Arc<Tenant>, ApiError> {
    let from_host = subdomain(tenants, request);
    let from_header = request
        .headers()
        .get(TENANT_HEADER)
        .map(|v| v.to_str().map(str::trim).unwrap_or_default());
    let tenant = match (from_host, from_header) {
        (Some(sub), header) => {
            let tenant = tenants.lookup(TenantKey::Slug(sub)).await?;
            if let Some(header) = header {
                let other = tenants.lookup(parse_reference(header)?).await?;
                if other.id != tenant.id {
                    return Err(ApiError::new(
                        ErrorCode::TenantMismatch,
                        "The subdomain and the X-Tenant header name different tenants.",
                    ));
                }
            }
            tenant
        }
        (None, Some(header)) => tenants.lookup(parse_reference(header)?).await?,
        (None, None) => {
            let how = match tenants.base_domain() {
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
        TenantStatus::Deleted => Err(AdmissionError::TenantNotFound.into()),
    }
}

/// The leftmost label of the host when the host is a direct subdomain of the base
/// domain and a valid slug.
fn subdomain(tenants: &TenantResolver, request: &Request) -> Option<String> {
    let base = tenants.base_domain()?;
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

/// Tells every instance (this one included) that a tenant changed. Best effort: when
/// Redis is down the caches' TTL bounds the staleness.
pub async fn publish_change(state: &AppState, tenant: TenantId) {
    admission::tenants::publish_change(&state.redis, &state.tenants, tenant).await;
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
    admission::tenants::listen_for_changes(
        state.settings.redis.url.clone(),
        state.tenants.clone(),
        stop,
    )
    .await;
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
        let tenant = resolve(&state.tenants, request).await?;
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
