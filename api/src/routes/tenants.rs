//! Tenants: the resolved tenant's profile (`GET /v1/tenant`) and its settings
//! (`PATCH /v1/tenant`), and the platform operator's registry (`/v1/admin/tenants`,
//! authenticated by platform API keys).
//!
//! The profile is public, for a login page: anyone naming the tenant sees its id, slug,
//! name, settings and registration policy. What else it shows depends on who asks: the
//! plan and storage use to members holding `billing:read`, the registration domains and
//! role to members holding `tenant:manage`.

use chrono::{DateTime, Utc};
use identity::{
    Registration, RegistrationPolicy,
    membership::{self, MAX_DOMAINS},
};
use poem::{Request, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use rbac::{
    Permission, PermissionSet, SystemRole,
    catalog::NOT_FOR_SELF_REGISTRATION,
    store::{self as roles, RegistrationRole},
};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use tenancy::{Tenant, TenantId, TenantSlug, TenantStatus, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    admin_auth::PlatformAdmin,
    auth::{
        client_info,
        permissions::{Authorized, MaybeSignedIn, perm},
    },
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{
        ApiTag,
        auth::audit,
        page,
        roles::{ensure_holds, lock_for_change},
    },
    tenant::{CurrentTenant, publish_change},
};

/// Tenant operations.
pub struct TenantsApi;

/// Lifecycle state of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TenantStatusView {
    /// Serves requests.
    Active,
    /// Keeps its data; its requests are refused with 403 `tenant_suspended`.
    Suspended,
    /// Unreachable; its schema and role are dropped after the grace period.
    Deleted,
}

impl From<TenantStatusView> for TenantStatus {
    fn from(status: TenantStatusView) -> Self {
        match status {
            TenantStatusView::Active => Self::Active,
            TenantStatusView::Suspended => Self::Suspended,
            TenantStatusView::Deleted => Self::Deleted,
        }
    }
}

impl From<SettableStatus> for TenantStatus {
    fn from(status: SettableStatus) -> Self {
        match status {
            SettableStatus::Active => Self::Active,
            SettableStatus::Suspended => Self::Suspended,
        }
    }
}

impl From<TenantStatus> for TenantStatusView {
    fn from(status: TenantStatus) -> Self {
        match status {
            TenantStatus::Active => Self::Active,
            TenantStatus::Suspended => Self::Suspended,
            TenantStatus::Deleted => Self::Deleted,
        }
    }
}

/// Settings the tenant keeps in its own schema.
#[derive(Debug, Object)]
pub struct TenantSettings {
    /// BCP 47 language tag.
    pub locale: String,
    /// IANA time zone.
    pub timezone: String,
}

/// Who may register themselves in a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RegistrationPolicyView {
    /// Nobody: members join through invitations (`POST /v1/invitations`).
    InviteOnly,
    /// Anyone, who then verifies their address.
    Open,
    /// Addresses of the listed domains only, who then verify their address.
    Domain,
}

impl From<RegistrationPolicy> for RegistrationPolicyView {
    fn from(policy: RegistrationPolicy) -> Self {
        match policy {
            RegistrationPolicy::InviteOnly => Self::InviteOnly,
            RegistrationPolicy::Open => Self::Open,
            RegistrationPolicy::Domain => Self::Domain,
        }
    }
}

impl From<RegistrationPolicyView> for RegistrationPolicy {
    fn from(policy: RegistrationPolicyView) -> Self {
        match policy {
            RegistrationPolicyView::InviteOnly => Self::InviteOnly,
            RegistrationPolicyView::Open => Self::Open,
            RegistrationPolicyView::Domain => Self::Domain,
        }
    }
}

/// The profile of the tenant a request addresses. Public members are always there; the
/// others only for a signed-in member holding the permission each names.
#[derive(Debug, Object)]
pub struct TenantProfile {
    /// Tenant id (usable in `X-Tenant`).
    pub id: Uuid,
    /// Slug (subdomain; usable in `X-Tenant`).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Always `active` here: other tenants are not served.
    pub status: TenantStatusView,
    /// Tenant-owned settings.
    pub settings: TenantSettings,
    /// Who may register themselves (`POST /v1/auth/register`).
    pub registration_policy: RegistrationPolicyView,
    /// The domains the `domain` policy admits (lower-case ASCII). Only with `tenant:manage`.
    #[oai(skip_serializing_if_is_none)]
    pub registration_domains: Option<Vec<String>>,
    /// The role self-registered users get. Only with `tenant:manage`.
    #[oai(skip_serializing_if_is_none)]
    pub registration_role_id: Option<Uuid>,
    /// Billing plan. Only with `billing:read`.
    #[oai(skip_serializing_if_is_none)]
    pub plan: Option<String>,
    /// File storage in use, and what the plan allows. Only with `billing:read`.
    #[oai(skip_serializing_if_is_none)]
    pub storage: Option<StorageUsage>,
}

/// Changes to the tenant's own settings; absent fields stay as they are.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateCurrentTenant {
    /// Who may register themselves. `domain` needs at least one domain.
    #[serde(default)]
    pub registration_policy: Option<RegistrationPolicyView>,
    /// The domains `domain` admits, replacing the list: at most 50 names such as
    /// `example.com` (compared exactly, subdomains not included; international names are
    /// stored in their ASCII `xn--` form, case does not matter).
    #[oai(validator(max_items = 50))]
    #[serde(default)]
    pub registration_domains: Option<Vec<String>>,
    /// The role self-registered users get (`null`: `viewer`, the default). It must be
    /// below admin: neither `owner` nor `admin`, and allowing (itself or through its
    /// parents) none of `users:manage`, `roles:manage`, `tenant:manage`,
    /// `billing:manage`; and you must hold everything it allows.
    #[serde(default)]
    pub registration_role_id: MaybeUndefined<Uuid>,
}

// The schema's `maxItems` of `registration_domains` (attributes take literals only).
const _: () = assert!(
    MAX_DOMAINS == 50,
    "update maxItems of `registration_domains`"
);

impl UpdateCurrentTenant {
    /// The domains, normalized and deduplicated (in the given order); per-item errors.
    fn domains(&self) -> Result<Option<Vec<String>>, Vec<FieldError>> {
        let Some(raw) = &self.registration_domains else {
            return Ok(None);
        };
        if raw.len() > MAX_DOMAINS {
            return Err(vec![FieldError::new(
                "registration_domains",
                FieldCode::TooLong,
                format!("at most {MAX_DOMAINS} domains"),
            )]);
        }
        let mut domains = Vec::new();
        let mut errors = Vec::new();
        for (i, domain) in raw.iter().enumerate() {
            match membership::normalize_domain(domain) {
                Ok(domain) if !domains.contains(&domain) => domains.push(domain),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(
                    format!("registration_domains[{i}]"),
                    match e {
                        membership::DomainError::TooLong => FieldCode::TooLong,
                        membership::DomainError::Invalid => FieldCode::Invalid,
                    },
                    e.to_string(),
                )),
            }
        }
        all_valid(errors).map(|()| Some(domains))
    }
}

impl Validate for UpdateCurrentTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if self.registration_policy.is_none()
            && self.registration_domains.is_none()
            && self.registration_role_id.is_undefined()
        {
            return Err(vec![FieldError::new(
                "",
                FieldCode::Empty,
                "give at least one of `registration_policy`, `registration_domains`, `registration_role_id`",
            )]);
        }
        self.domains().map(|_| ())
    }
}

/// File storage of a tenant.
#[derive(Debug, Object)]
pub struct StorageUsage {
    /// Bytes of live files.
    pub used_bytes: i64,
    /// Live files.
    pub files: i64,
    /// Bytes the plan allows.
    pub limit_bytes: u64,
}

/// A tenant as the platform operator sees it.
#[derive(Debug, Object)]
pub struct AdminTenant {
    /// Tenant id.
    pub id: Uuid,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Lifecycle state.
    pub status: TenantStatusView,
    /// Billing plan.
    pub plan: String,
    /// The tenant's PostgreSQL schema (and role), derived from its id.
    pub schema: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When a deleted tenant's schema and role will be dropped.
    pub purge_after: Option<DateTime<Utc>>,
}

impl From<&Tenant> for AdminTenant {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.0,
            slug: t.slug.to_string(),
            name: t.name.clone(),
            status: t.status.into(),
            plan: t.plan.clone(),
            schema: t.schema_name(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            deleted_at: t.deleted_at,
            purge_after: t.purge_after,
        }
    }
}

/// A new tenant.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Lowercase DNS label, 3 to 63 characters (letters, digits, inner hyphens), not reserved
    /// (`admin`, `api`, `www`, `public`, …) and not a UUID.
    #[oai(validator(
        min_length = 3,
        max_length = 63,
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    ))]
    pub slug: String,
    /// Display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: String,
}

impl Validate for CreateTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(reason) = TenantSlug::parse(&self.slug) {
            errors.push(FieldError::new(
                "slug",
                FieldCode::Invalid,
                format!("slug {reason}"),
            ));
        }
        if tenancy::validate_name(&self.name).is_err() {
            errors.push(FieldError::new(
                "name",
                FieldCode::Length,
                "must be 1 to 200 characters",
            ));
        }
        all_valid(errors)
    }
}

/// Status a tenant can be set to (deletion has its own operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SettableStatus {
    /// Serve the tenant again.
    Active,
    /// Refuse the tenant's requests, keeping its data.
    Suspended,
}

/// Changes to a tenant.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// New status.
    pub status: Option<SettableStatus>,
    /// New display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: Option<String>,
}

impl Validate for UpdateTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.status.is_none() && self.name.is_none() {
            errors.push(FieldError::new(
                "",
                FieldCode::Empty,
                "give `status`, `name` or both",
            ));
        }
        if self
            .name
            .as_deref()
            .is_some_and(|n| tenancy::validate_name(n).is_err())
        {
            errors.push(FieldError::new(
                "name",
                FieldCode::Length,
                "must be 1 to 200 characters",
            ));
        }
        all_valid(errors)
    }
}

/// A page of tenants.
#[derive(Debug, Object)]
pub struct TenantPage {
    /// Tenants ordered by slug.
    pub items: Vec<AdminTenant>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Answer to a tenant creation.
#[derive(ApiResponse)]
pub enum TenantCreated {
    /// Provisioned: schema, role, migrations and seed data are in place.
    #[oai(status = 201)]
    Created(Json<AdminTenant>, #[oai(header = "Location")] String),
}

#[OpenApi(tag = "ApiTag::Tenants")]
impl TenantsApi {
    /// The tenant this request addresses.
    ///
    /// The tenant comes from the subdomain of the base domain, else from the `X-Tenant`
    /// header (slug or id). Anyone may ask (a login page needs the name and whether it may
    /// offer registration); with an access token, members holding `billing:read` also see
    /// the plan and storage use, and those holding `tenant:manage` the registration
    /// settings. An access token that is sent must be valid.
    #[oai(
        path = "/v1/tenant",
        method = "get",
        operation_id = "get_current_tenant"
    )]
    async fn get_current_tenant(
        &self,
        state: Data<&AppState>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        caller: MaybeSignedIn,
    ) -> ApiResult<Json<TenantProfile>> {
        let tenant = tenant.0;
        let mut tx = state.tenant_db.begin(tenant.id).await?;
        let profile = profile(&state, &mut tx, &tenant, caller.granted()).await?;
        tx.commit().await?;
        Ok(Json(profile))
    }

    /// Change the tenant's registration settings.
    ///
    /// Sets who may register themselves (`invite_only`, `open`, or `domain` with its
    /// domains) and the role they get. Takes effect with the next registration. Audited as
    /// `tenant.registration_changed`. Answers with the profile as the caller sees it.
    #[oai(
        path = "/v1/tenant",
        method = "patch",
        operation_id = "update_current_tenant"
    )]
    async fn update_current_tenant(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::TenantManage>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        body: JsonBody<UpdateCurrentTenant>,
    ) -> ApiResult<Json<TenantProfile>> {
        let me = auth.principal;
        let client = client_info(request);
        let body = body.0;
        let domains = body.domains().map_err(ApiError::validation)?;
        let mut tx = state.tenant_db.begin(me.tenant.id).await?;
        // Under the roles lock: the role judged here cannot change before this commits.
        let (all_roles, held) = lock_for_change(&mut tx, &me, Permission::TenantManage).await?;
        let before = membership::registration(&mut tx).await?;
        let mut after = before.clone();
        if let Some(policy) = body.registration_policy {
            after.policy = policy.into();
        }
        if let Some(domains) = domains {
            after.domains = domains;
        }
        match body.registration_role_id {
            MaybeUndefined::Value(id) => {
                judge_registration_role(&all_roles, held, id)?;
                after.role_id = Some(id);
            }
            MaybeUndefined::Null => after.role_id = None,
            MaybeUndefined::Undefined => {}
        }
        if after.policy == RegistrationPolicy::Domain && after.domains.is_empty() {
            return Err(ApiError::validation(vec![FieldError::new(
                "registration_domains",
                FieldCode::Required,
                "the `domain` policy needs at least one domain",
            )]));
        }
        if after != before {
            membership::set_registration(&mut tx, &after).await?;
            audit(
                &mut tx,
                "tenant.registration_changed",
                Some(me.user_id),
                None,
                Some(me.session_id),
                &client,
                json!({ "from": registration_json(&before), "to": registration_json(&after) }),
            )
            .await?;
        }
        let profile = profile(&state, &mut tx, &me.tenant, held).await?;
        tx.commit().await?;
        Ok(Json(profile))
    }

    /// Provision a tenant.
    ///
    /// Creates, in one transaction, the tenant's record, PostgreSQL role and schema, every
    /// tenant migration and the default data. A taken slug is 409 `slug_taken`.
    #[oai(
        path = "/v1/admin/tenants",
        method = "post",
        operation_id = "create_tenant"
    )]
    async fn create_tenant(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        body: JsonBody<CreateTenant>,
    ) -> ApiResult<TenantCreated> {
        let slug = TenantSlug::parse(&body.0.slug).map_err(tenancy::TenancyError::from)?;
        let tenant = state.db.create_tenant(&slug, &body.0.name).await?;
        tracing::info!(tenant_id = %tenant.id, slug = %tenant.slug, "tenant created");
        // A cached "no such tenant" for this slug must go.
        publish_change(&state, tenant.id).await;
        let location = format!("/v1/admin/tenants/{}", tenant.id);
        Ok(TenantCreated::Created(Json((&tenant).into()), location))
    }

    /// List tenants, ordered by slug.
    #[oai(
        path = "/v1/admin/tenants",
        method = "get",
        operation_id = "list_tenants"
    )]
    async fn list_tenants(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        /// Only tenants in this state.
        status: Query<Option<TenantStatusView>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<TenantPage>> {
        let after = cursor.0.as_deref().map(decode_cursor).transpose()?;
        let status = status.0.map(TenantStatus::from);
        let tenants = state
            .db
            .list_tenants(status, after.as_deref(), limit.0 + 1)
            .await?;
        let (tenants, next_cursor) = page(tenants, limit.0, |t| hex::encode(t.slug.as_str()));
        Ok(Json(TenantPage {
            items: tenants.iter().map(AdminTenant::from).collect(),
            next_cursor,
        }))
    }

    /// One tenant, whatever its state.
    #[oai(
        path = "/v1/admin/tenants/:id",
        method = "get",
        operation_id = "get_tenant"
    )]
    async fn get_tenant(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        id: Path<Uuid>,
    ) -> ApiResult<Json<AdminTenant>> {
        let tenant = state
            .db
            .tenant_by_id(TenantId(id.0))
            .await?
            .ok_or(tenancy::TenancyError::TenantNotFound)?;
        Ok(Json((&tenant).into()))
    }

    /// Suspend, resume or rename a tenant.
    ///
    /// A suspension takes effect on every server instance within a second.
    #[oai(
        path = "/v1/admin/tenants/:id",
        method = "patch",
        operation_id = "update_tenant"
    )]
    async fn update_tenant(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        id: Path<Uuid>,
        body: JsonBody<UpdateTenant>,
    ) -> ApiResult<Json<AdminTenant>> {
        let id = TenantId(id.0);
        let status = body.0.status.map(TenantStatus::from);
        let tenant = state
            .db
            .update_tenant(id, body.0.name.as_deref(), status)
            .await?;
        if let Some(status) = status {
            tracing::info!(tenant_id = %id, status = %status, "tenant status changed");
        }
        publish_change(&state, id).await;
        Ok(Json((&tenant).into()))
    }

    /// Delete a tenant.
    ///
    /// The tenant is unreachable at once; its schema and role are dropped once the grace
    /// period (`CANOPY_TENANT_DELETION_GRACE`) has passed, at `purge_after`.
    #[oai(
        path = "/v1/admin/tenants/:id",
        method = "delete",
        operation_id = "delete_tenant"
    )]
    async fn delete_tenant(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        id: Path<Uuid>,
    ) -> ApiResult<Json<AdminTenant>> {
        let id = TenantId(id.0);
        let tenant = state
            .db
            .delete_tenant(id, state.settings.tenancy.deletion_grace)
            .await?;
        tracing::info!(tenant_id = %id, purge_after = ?tenant.purge_after, "tenant deleted");
        publish_change(&state, id).await;
        Ok(Json((&tenant).into()))
    }
}

/// The profile of `tenant` as a caller holding `granted` may see it: one query for an
/// anonymous visitor (the login page's), more only for what a member may see.
async fn profile(
    state: &AppState,
    tx: &mut TenantTx,
    tenant: &Tenant,
    granted: PermissionSet,
) -> ApiResult<TenantProfile> {
    let row = sqlx::query(&format!(
        "select locale, timezone, {} from settings",
        membership::REGISTRATION_COLUMNS
    ))
    .fetch_one(&mut **tx)
    .await?;
    let locale: String = row.try_get("locale")?;
    let timezone: String = row.try_get("timezone")?;
    let registration = &membership::registration_from_row(&row)?;
    let manager = granted.contains(Permission::TenantManage);
    let role_id = match (manager, registration.role_id) {
        (false, _) => None,
        (true, Some(id)) => Some(id),
        (true, None) => Some(
            roles::system_role_id(tx, SystemRole::Viewer)
                .await
                .map_err(ApiError::internal)?,
        ),
    };
    let storage = if granted.contains(Permission::BillingRead) {
        let (used_bytes, files) = files::store::usage(tx).await?;
        let limits = state.settings.plans.limits(&tenant.plan);
        Some(StorageUsage {
            used_bytes,
            files,
            limit_bytes: limits.storage_bytes.as_u64(),
        })
    } else {
        None
    };
    Ok(TenantProfile {
        id: tenant.id.0,
        slug: tenant.slug.to_string(),
        name: tenant.name.clone(),
        status: tenant.status.into(),
        settings: TenantSettings { locale, timezone },
        registration_policy: registration.policy.into(),
        registration_domains: manager.then(|| registration.domains.clone()),
        registration_role_id: role_id,
        plan: granted
            .contains(Permission::BillingRead)
            .then(|| tenant.plan.clone()),
        storage,
    })
}

/// A 422 unless role `id` may be the role of self-registered users, and a 403 unless the
/// caller (holding `held`) holds everything it allows: otherwise registering a second
/// account would be a way to get more than one has.
fn judge_registration_role(
    all_roles: &[rbac::Role],
    held: PermissionSet,
    id: Uuid,
) -> Result<(), ApiError> {
    match roles::registration_role(all_roles, id) {
        RegistrationRole::Allowed(allows) => {
            ensure_holds(held, allows, "This role grants permissions you do not hold")
        }
        RegistrationRole::NotFound => Err(ApiError::validation(vec![FieldError::new(
            "registration_role_id",
            FieldCode::NotFound,
            "no role of this tenant has this id",
        )])),
        RegistrationRole::TooPowerful(forbidden) => {
            Err(ApiError::validation(vec![FieldError::new(
                "registration_role_id",
                FieldCode::TooPowerful,
                format!(
                    "must be a role below admin: not owner or admin, and allowing none of {}{}",
                    NOT_FOR_SELF_REGISTRATION.names().join(", "),
                    if forbidden.is_empty() {
                        String::new()
                    } else {
                        format!(" (this one allows {})", forbidden.names().join(", "))
                    }
                ),
            )]))
        }
    }
}

fn registration_json(registration: &Registration) -> serde_json::Value {
    json!({
        "policy": registration.policy.as_str(),
        "domains": registration.domains,
        "role_id": registration.role_id,
    })
}

fn default_limit() -> i64 {
    50
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|slug| TenantSlug::parse(slug).is_ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                "Parameter `cursor` is not a cursor this API issued.",
            )
        })
}
