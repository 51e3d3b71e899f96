//! One module per API tag, each with its `XxxApi` struct, its request and response types
//! beside the handlers.

pub mod auth;
pub mod health;
pub mod jobs;
pub mod ops;
pub mod tenants;
pub mod users;

use poem_openapi::{OpenApiService, Tags};

/// Tags grouping operations in the OpenAPI document and Swagger UI.
#[derive(Debug, Tags)]
#[oai(rename_all = "lowercase")]
pub enum ApiTag {
    /// Liveness and readiness probes for orchestrators and load balancers.
    Health,
    /// The tenant a request addresses, and the platform operator's tenant registry
    /// (`/v1/admin/tenants`, authenticated by platform API keys).
    Tenants,
    /// The background job queue (`/v1/admin/jobs`, authenticated by platform API keys).
    Jobs,
    /// Sign-up, login, tokens, sessions and password recovery for a tenant's users.
    Auth,
    /// The current user and the tenant's member directory.
    Users,
}

/// Every API of the service, in the order the document lists them.
pub type Apis = (
    health::HealthApi,
    auth::AuthApi,
    users::UsersApi,
    tenants::TenantsApi,
    jobs::JobsApi,
);

/// The OpenAPI service: routes plus the document describing them.
pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            health::HealthApi,
            auth::AuthApi,
            users::UsersApi,
            tenants::TenantsApi,
            jobs::JobsApi,
        ),
        "Canopy",
        env!("CARGO_PKG_VERSION"),
    )
    .summary("Multi-tenant SaaS backend")
    .description(
        "Every tenant organization lives in its own PostgreSQL schema. Tenant-scoped \
             operations take their tenant from the subdomain of the base domain or from the \
             `X-Tenant` header. Every error is an RFC 9457 `application/problem+json` document \
             with a stable `code`; `GET /problems/{code}` explains each code.",
    )
    .license(poem_openapi::LicenseObject::new("AGPL-3.0-only"))
}

/// Keyset pagination: listings fetch `limit + 1` rows, the extra one only telling that a
/// next page exists. Returns the page and the cursor of its last row when there is more.
pub(crate) fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    (rows, next)
}

/// The document as pretty JSON, exactly as `openapi/openapi.json` stores it.
pub fn openapi_json() -> String {
    let mut spec = openapi_service().spec();
    spec.push('\n');
    spec
}
