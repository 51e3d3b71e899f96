//! One module per API tag, each with its `XxxApi` struct, its request and response types
//! beside the handlers.

pub mod audit;
pub mod auth;
pub mod billing;
pub mod files;
pub mod health;
pub mod invitations;
pub mod jobs;
pub mod ops;
pub mod products;
pub mod roles;
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
    /// The current user, the tenant's member directory and users' roles.
    Users,
    /// Invitations to join the tenant, and their acceptance.
    Invitations,
    /// The permission catalog and the tenant's roles.
    Roles,
    /// The tenant's product catalog.
    Products,
    /// The tenant's files: uploads, downloads and thumbnails.
    Files,
    /// The tenant's security audit log.
    Audit,
    /// Plans, subscriptions through Stripe, and Stripe's webhooks.
    Billing,
}

/// Every API of the service, in the order the document lists them.
pub type Apis = (
    health::HealthApi,
    auth::AuthApi,
    users::UsersApi,
    invitations::InvitationsApi,
    roles::RolesApi,
    products::ProductsApi,
    files::FilesApi,
    billing::BillingApi,
    audit::AuditApi,
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
            invitations::InvitationsApi,
            roles::RolesApi,
            products::ProductsApi,
            files::FilesApi,
            billing::BillingApi,
            audit::AuditApi,
            tenants::TenantsApi,
            jobs::JobsApi,
        ),
        "Canopy",
        env!("CARGO_PKG_VERSION"),
    )
    // No `summary`: `info.summary` is OpenAPI 3.1, and the document is 3.0.
    .description(
        "A multi-tenant SaaS backend. Every tenant organization lives in its own PostgreSQL \
             schema. Tenant-scoped operations take their tenant from the subdomain of the base \
             domain or from the `X-Tenant` header. Every error is an RFC 9457 `application/problem+json` document \
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

/// The cursor of a listing ordered by creation: `<created_at µs>_<id>`.
pub(crate) fn created_cursor(created_at: chrono::DateTime<chrono::Utc>, id: uuid::Uuid) -> String {
    format!("{}_{}", created_at.timestamp_micros(), id.simple())
}

/// The keyset (created_at, id) of a cursor [`created_cursor`] made; a 400 for anything else.
pub(crate) fn decode_created_cursor(
    cursor: &str,
) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), crate::error::ApiError> {
    cursor
        .split_once('_')
        .and_then(|(micros, id)| {
            let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
            Some((at, uuid::Uuid::parse_str(id).ok()?))
        })
        .ok_or_else(|| {
            crate::error::ApiError::new(
                crate::error::ErrorCode::InvalidParameter,
                "Parameter `cursor` is not a cursor this API issued.",
            )
        })
}

/// The security scheme of tenant users (see [`crate::auth::UserAuth`]).
pub(crate) const USER_AUTH: &str = "UserAuth";

/// The OpenAPI document as served and checked in (pretty JSON).
///
/// poem-openapi names an operation's security requirement after its extractor's scheme;
/// [`crate::auth::permissions::Authorized`] names it after the permission it checks. Here
/// each such requirement becomes `UserAuth` again, and the operation gets the permission
/// as `x-permission` and as a line of its description (which Swagger UI shows).
pub fn openapi_json() -> String {
    let raw = openapi_service().spec();
    let mut doc: serde_json::Value =
        serde_json::from_str(&raw).expect("poem-openapi emits valid JSON");
    let operations = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(serde_json::Value::as_object_mut);
    for op in operations {
        let mut permission = None;
        let mut user_auth = false;
        // An empty requirement: anonymous callers are served too (`MaybeSignedIn`).
        let anonymous = op
            .get("security")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|all| {
                all.iter()
                    .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
            });
        let requirements = op
            .get_mut("security")
            .and_then(serde_json::Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_object_mut);
        for requirement in requirements {
            let named: Vec<String> = requirement.keys().cloned().collect();
            for name in named {
                if let Ok(p) = name.parse::<rbac::Permission>() {
                    let scopes = requirement.remove(&name).unwrap_or_default();
                    requirement.insert(USER_AUTH.to_owned(), scopes);
                    permission = Some(p);
                }
                user_auth |= requirement.contains_key(USER_AUTH);
            }
        }
        let note = match permission {
            Some(p) => {
                op.insert("x-permission".to_owned(), p.as_str().into());
                format!("**Permission:** `{p}` ({})", p.description())
            }
            None if user_auth && anonymous => {
                "**Authentication:** optional; a signed-in user of the tenant may see more."
                    .to_owned()
            }
            None if user_auth => {
                "**Permission:** none; any signed-in user of the tenant.".to_owned()
            }
            None => continue,
        };
        let description = match op.get("description").and_then(serde_json::Value::as_str) {
            Some(text) => format!("{text}\n\n{note}"),
            None => note,
        };
        op.insert("description".to_owned(), description.into());
    }
    mark_required_headers(&mut doc);
    close_request_bodies(&mut doc);
    let mut json = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
    json.push('\n');
    json
}

/// Marks the schema of every JSON request body, and the object schemas it refers to,
/// `additionalProperties: false`. Every request type is parsed by
/// [`crate::payload::JsonBody`] with `#[serde(deny_unknown_fields)]` (its
/// `#[oai(deny_unknown_fields)]` twin only changes poem's own parser, not the schema), so an
/// unknown member is a 422 `unknown_field`; `tests/api/openapi.rs` checks each operation.
fn close_request_bodies(doc: &mut serde_json::Value) {
    let mut pending: Vec<String> = doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(serde_json::Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|op| {
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
        })
        .map(str::to_owned)
        .collect();
    let mut closed = std::collections::BTreeSet::new();
    while let Some(reference) = pending.pop() {
        let Some(name) = reference.strip_prefix("#/components/schemas/") else {
            continue;
        };
        let schema = &mut doc["components"]["schemas"][name];
        if schema["type"] != "object"
            || !schema["properties"].is_object()
            || !closed.insert(name.to_owned())
        {
            continue;
        }
        schema["additionalProperties"] = false.into();
        // Objects nested in a request (`BulkCreate.items` are `CreateProduct`s).
        let nested = schema["properties"]
            .as_object()
            .into_iter()
            .flat_map(|properties| properties.values())
            .flat_map(|p| [&p["$ref"], &p["items"]["$ref"]])
            .filter_map(serde_json::Value::as_str)
            .map(str::to_owned);
        pending.extend(nested.collect::<Vec<_>>());
    }
}

/// Headers an operation refuses to do without although its handler takes them as
/// `Header<Option<…>>`: (operation id, header). The handler reads them optionally so that a
/// missing one gets the same problem as a bad one (400 `invalid_signature` for Stripe's
/// signature) instead of the framework's `invalid_parameter`; the document still says they
/// are required, because a request without one never succeeds.
const REQUIRED_HEADERS: &[(&str, &str)] = &[("stripe_webhook", "Stripe-Signature")];

/// Marks the [`REQUIRED_HEADERS`] `required` in the document.
fn mark_required_headers(doc: &mut serde_json::Value) {
    let operations = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for op in operations {
        let Some(id) = op["operationId"].as_str().map(str::to_owned) else {
            continue;
        };
        let params = op
            .get_mut("parameters")
            .and_then(serde_json::Value::as_array_mut)
            .into_iter()
            .flatten();
        for param in params {
            let required = REQUIRED_HEADERS.iter().any(|(op_id, header)| {
                *op_id == id
                    && param["in"] == "header"
                    && param["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(header))
            });
            if required {
                param["required"] = true.into();
            }
        }
    }
}
