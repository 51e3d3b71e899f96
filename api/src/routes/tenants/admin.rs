//! The platform operator's tenant registry (`/v1/admin/tenants`, authenticated by platform
//! API keys).

use poem::web::Data;
use poem_openapi::{
    OpenApi,
    param::{Path, Query},
    payload::Json,
};
use tenancy::{TenantId, TenantSlug, TenantStatus};
use uuid::Uuid;

use crate::{
    AppState,
    admin_auth::PlatformAdmin,
    error::{ApiError, ApiResult, ErrorCode},
    payload::JsonBody,
    routes::{ApiTag, pagination::page, tenants::*},
    tenant::publish_change,
};

/// Tenant registry endpoints.
pub struct AdminTenantsApi;

#[OpenApi(tag = "ApiTag::Tenants")]
impl AdminTenantsApi {
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
