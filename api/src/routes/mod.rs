//! One module per API tag, each with its `XxxApi` struct, its request and response types
//! beside the handlers; and the pieces several of them share, which depend on no route
//! module: [`pagination`] (pages and cursors), [`checks`] (field checks), [`guards`] (role
//! and assignment guards) and `audit::record` (appending to the audit log). This module
//! only assembles: the tags, the service and its document.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod checks;
pub mod emails;
pub mod files;
pub mod guards;
pub mod health;
pub mod invitations;
pub mod jobs;
pub mod ops;
pub mod pagination;
pub mod products;
pub mod realtime;
pub mod roles;
pub mod tenants;
pub mod users;
pub mod views;

use poem_openapi::{OpenApiService, Tags};

use crate::{
    auth::authn::{API_KEY_AUTH, USER_AUTH},
    tenant::{TENANT_SCOPED, tenant_parameter},
};

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
    /// The tenant's API keys (service accounts).
    #[oai(rename = "api-keys")]
    ApiKeys,
    /// The tenant's security audit log.
    Audit,
    /// The tenant's email: delivery records, one-click unsubscribe, and the tenant's own
    /// templates; every tenant's delivery records for the operator (`/v1/admin/emails`).
    Email,
    /// Plans, subscriptions through Stripe, and Stripe's webhooks.
    Billing,
    /// Live connections: the WebSocket, its Server-Sent Events twin, and their tickets.
    Realtime,
}

/// Every API of the service, in the order the document lists them.
pub type Apis = (
    health::HealthApi,
    auth::AuthApi,
    users::UsersApi,
    users::lifecycle::LifecycleApi,
    invitations::InvitationsApi,
    roles::RolesApi,
    products::ProductsApi,
    files::FilesApi,
    realtime::RealtimeApi,
    billing::BillingApi,
    api_keys::ApiKeysApi,
    audit::AuditApi,
    emails::EmailApi,
    tenants::TenantsApi,
    jobs::JobsApi,
);

/// The OpenAPI service: routes plus the document describing them.
pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            health::HealthApi,
            auth::AUTH_API,
            users::UsersApi,
            users::lifecycle::LIFECYCLE_API,
            invitations::InvitationsApi,
            roles::RolesApi,
            products::ProductsApi,
            files::FilesApi,
            realtime::RealtimeApi,
            billing::BillingApi,
            api_keys::ApiKeysApi,
            audit::AuditApi,
            emails::EMAIL_API,
            tenants::TENANTS_API,
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

/// The OpenAPI document as served and checked in (pretty JSON).
///
/// poem-openapi names an operation's security requirement after its extractor's scheme;
/// [`crate::auth::Authorized`] names it after the permission it checks, and
/// [`crate::tenant::CurrentTenant`] names the mark [`TENANT_SCOPED`]. Here each
/// permission becomes `UserAuth` again (with the alternative `ApiKeyAuth` unless API keys
/// can never hold the permission), and the operation gets the permission as
/// `x-permission` and as a line of its description (which Swagger UI shows); the mark is
/// dropped; and every tenant-scoped operation (a user's or the mark's) gets the `X-Tenant`
/// header parameter ([`tenant_parameter`]) first.
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
        let access = fold_security(op);
        if access.tenant_scoped() {
            add_tenant_parameter(op);
        }
        if let Some(note) = access.note() {
            let description = match op.get("description").and_then(serde_json::Value::as_str) {
                Some(text) => format!("{text}\n\n{note}"),
                None => note,
            };
            op.insert("description".to_owned(), description.into());
        }
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
/// Multipart forms (the upload's) are closed too: their reader refuses any other field.
fn close_request_bodies(doc: &mut serde_json::Value) {
    let forms = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.pointer_mut("/requestBody/content/multipart~1form-data/schema"))
        .filter(|schema| schema["properties"].is_object());
    for form in forms {
        form["additionalProperties"] = false.into();
    }
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

/// Who may call an operation, as its raw security requirements say.
#[derive(Debug, Default)]
struct Access {
    permission: Option<rbac::Permission>,
    user_auth: bool,
    anonymous: bool,
    tenant_mark: bool,
}

impl Access {
    fn tenant_scoped(&self) -> bool {
        self.user_auth || self.tenant_mark
    }

    /// The line the operation's description gets.
    fn note(&self) -> Option<String> {
        Some(match self.permission {
            Some(p) if rbac::catalog::NOT_FOR_API_KEYS.contains(p) => format!(
                "**Permission:** `{p}` ({}); not with an API key.",
                p.description()
            ),
            Some(p) => format!(
                "**Permission:** `{p}` ({}); also with an API key holding it.",
                p.description()
            ),
            None if self.user_auth && self.anonymous => {
                "**Authentication:** optional; a signed-in user of the tenant may see more."
                    .to_owned()
            }
            None if self.user_auth => {
                "**Permission:** none; any signed-in user of the tenant.".to_owned()
            }
            None => return None,
        })
    }
}

/// Rewrites permission requirements into `UserAuth` or `ApiKeyAuth` (adding `x-permission`), drops the
/// tenant mark (and `security` with it when nothing else is left), and says what it saw.
fn fold_security(op: &mut serde_json::Map<String, serde_json::Value>) -> Access {
    let mut access = Access::default();
    let Some(all) = op
        .get_mut("security")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return access;
    };
    // An empty requirement: anonymous callers are served too (`MaybeSignedIn`).
    access.anonymous = all
        .iter()
        .any(|r| r.as_object().is_some_and(|r| r.is_empty()));
    all.retain(|r| {
        let marked = r
            .as_object()
            .is_some_and(|r| r.len() == 1 && r.contains_key(TENANT_SCOPED));
        access.tenant_mark |= marked;
        !marked
    });
    let emptied = all.is_empty();
    for requirement in all.iter_mut().filter_map(serde_json::Value::as_object_mut) {
        let named: Vec<String> = requirement.keys().cloned().collect();
        for name in named {
            if let Ok(p) = name.parse::<rbac::Permission>() {
                let scopes = requirement.remove(&name).unwrap_or_default();
                requirement.insert(USER_AUTH.to_owned(), scopes);
                access.permission = Some(p);
            }
            access.user_auth |= requirement.contains_key(USER_AUTH);
        }
    }
    if let Some(p) = access.permission
        && !rbac::catalog::NOT_FOR_API_KEYS.contains(p)
    {
        all.push(serde_json::json!({ API_KEY_AUTH: [] }));
    }
    if emptied {
        op.shift_remove("security");
    }
    if let Some(p) = access.permission {
        op.insert("x-permission".to_owned(), p.as_str().into());
    }
    access
}

/// Puts the `X-Tenant` parameter first, creating `parameters` where poem-openapi would
/// have (after the tags, summary and description).
fn add_tenant_parameter(op: &mut serde_json::Map<String, serde_json::Value>) {
    if let Some(params) = op
        .get_mut("parameters")
        .and_then(serde_json::Value::as_array_mut)
    {
        params.insert(0, tenant_parameter());
        return;
    }
    let at = op
        .keys()
        .position(|k| !matches!(k.as_str(), "tags" | "summary" | "description"))
        .unwrap_or(op.len());
    op.shift_insert(at, "parameters".to_owned(), vec![tenant_parameter()].into());
}
