//! Tenants: the resolved tenant's profile (`GET /v1/tenant`) and the platform operator's
//! registry (`/v1/admin/tenants`, authenticated by platform API keys).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;
use tenancy::{Tenant, TenantId, TenantSlug, TenantStatus};
use uuid::Uuid;

use crate::{
    AppState,
    admin_auth::PlatformAdmin,
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{ApiTag, page},
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

/// The public profile of the tenant a request addresses.
#[derive(Debug, Object)]
pub struct TenantProfile {
    /// Tenant id (usable in `X-Tenant`).
    pub id: Uuid,
    /// Slug (subdomain; usable in `X-Tenant`).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Billing plan.
    pub plan: String,
    /// Always `active` here: other tenants are not served.
    pub status: TenantStatusView,
    /// Tenant-owned settings.
    pub settings: TenantSettings,
    /// File storage in use, and what the plan allows.
    pub storage: StorageUsage,
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
    /// Lowercase DNS label, 3 to 63 characters (letters, digits, inner hyphens), not
    /// reserved (`admin`, `api`, `www`, `public`, …).
    pub slug: String,
    /// Display name, 1 to 200 characters.
    pub name: String,
}

impl Validate for CreateTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(reason) = TenantSlug::parse(&self.slug) {
            errors.push(FieldError::new("slug", "invalid", format!("slug {reason}")));
        }
        if tenancy::validate_name(&self.name).is_err() {
            errors.push(FieldError::new(
                "name",
                "length",
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
    /// New display name.
    pub name: Option<String>,
}

impl Validate for UpdateTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.status.is_none() && self.name.is_none() {
            errors.push(FieldError::new(
                "",
                "empty",
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
                "length",
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
    /// header (slug or id).
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
    ) -> ApiResult<Json<TenantProfile>> {
        let tenant = tenant.0;
        let mut tx = state.tenant_db.begin(tenant.id).await?;
        let (locale, timezone): (String, String) =
            sqlx::query_as("select locale, timezone from settings")
                .fetch_one(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        let (used_bytes, files) = crate::files::store::usage(&mut tx).await?;
        tx.commit().await?;
        let limits = state.settings.plans.limits(&tenant.plan);
        Ok(Json(TenantProfile {
            id: tenant.id.0,
            slug: tenant.slug.to_string(),
            name: tenant.name.clone(),
            plan: tenant.plan.clone(),
            status: tenant.status.into(),
            settings: TenantSettings { locale, timezone },
            storage: StorageUsage {
                used_bytes,
                files,
                limit_bytes: limits.storage_bytes.as_u64(),
            },
        }))
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
