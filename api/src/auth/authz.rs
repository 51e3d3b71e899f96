//! Authorization: every tenant endpoint names the permission it needs in its signature,
//! `auth: Authorized<perm::ProductsWrite>`, and nothing else. The extractor authenticates
//! the caller ([`super::authn`]), then authorizes them (`authorize`): it reads what they
//! may do (from the permission cache entries authentication read in its round trip, see
//! [`super::permissions`]) and checks the permission before the handler runs (403
//! `forbidden` naming the missing permission). The same type puts the permission into the
//! OpenAPI document: its security requirement is named after the permission, and
//! [`crate::routes::openapi_json`] folds that back into `UserAuth` plus an
//! `x-permission` member and a line in the operation's description.

use std::{marker::PhantomData, sync::Arc};

use poem::{Request, RequestBody};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, registry::Registry};
use rbac::{Permission, PermissionSet, catalog::NOT_FOR_API_KEYS};
use tenancy::{Tenant, TenantId, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        authn::{
            ApiKeyAuth, Keys, LookedUp, Principal, USER_AUTH, UserAuth, app_state, authenticate_in,
            authenticate_reading, not_for_keys,
        },
        permissions::Permissions,
    },
    error::{ApiError, ErrorCode},
    tenant::CurrentTenant,
};

/// A permission an endpoint requires, as a type (see [`perm`]).
pub trait Requirement: Send + Sync + 'static {
    /// The permission.
    const PERMISSION: Permission;
}

macro_rules! requirements {
    ($($variant:ident),* $(,)?) => {
        /// One marker type per permission of the catalog, for [`Authorized`].
        pub mod perm {
            $(
                #[doc = concat!("Requires [`rbac::Permission::", stringify!($variant), "`].")]
                #[derive(Debug)]
                pub struct $variant;

                impl super::Requirement for $variant {
                    const PERMISSION: rbac::Permission = rbac::Permission::$variant;
                }
            )*

            /// Keeps this list in step with the catalog: adding a permission without its
            /// marker fails to compile.
            #[allow(dead_code)]
            const fn exhaustive(p: rbac::Permission) {
                match p { $(rbac::Permission::$variant => {})* }
            }
        }
    };
}

requirements!(
    UsersRead,
    UsersManage,
    RolesRead,
    RolesManage,
    ProductsRead,
    ProductsWrite,
    ProductsDelete,
    FilesRead,
    FilesWrite,
    BillingRead,
    BillingManage,
    AuditRead,
    TenantManage,
    ApiKeysManage,
);

/// Authenticates the caller of `request`, reading their cached permissions in the same
/// Redis round trip, then works out what they may do.
async fn authenticate_and_authorize(
    request: &Request,
) -> Result<(Principal, PermissionSet), ApiError> {
    let (principal, cached) =
        authenticate_reading(request, Keys::Accepted, permission_keys).await?;
    let granted = authorize(app_state(request)?, &principal, cached).await?;
    Ok((principal, granted))
}

fn permission_keys(tenant: TenantId, user: Uuid) -> Vec<String> {
    Permissions::keys(tenant, user).to_vec()
}

/// Everything `principal` may do, from the permission cache entries `cached` (read by
/// authentication), or from the database when those are missing or stale. For an API key:
/// what both the key and its creator hold now (a demoted creator's keys lose what they
/// lost).
pub(crate) async fn authorize(
    state: &AppState,
    principal: &Principal,
    cached: LookedUp,
) -> Result<PermissionSet, ApiError> {
    let held = state
        .permissions
        .of_looked_up(principal.tenant.id, principal.user_id, cached.as_deref())
        .await
        .map_err(ApiError::from)?;
    Ok(bounded_by_key(principal, held))
}

/// `held` (the user's permissions), bounded by the API key `principal` acts with, if any.
pub(crate) fn bounded_by_key(principal: &Principal, held: PermissionSet) -> PermissionSet {
    match &principal.api_key {
        Some(key) => held
            .intersection(key.permissions)
            .difference(NOT_FOR_API_KEYS),
        None => held,
    }
}

/// `granted` must include `permission` (403 `forbidden` naming it otherwise).
pub fn require(granted: PermissionSet, permission: Permission) -> Result<(), ApiError> {
    if granted.contains(permission) {
        Ok(())
    } else {
        Err(missing(permission))
    }
}

/// A request by a user who holds permission `P` in the tenant it addresses.
pub struct Authorized<P: Requirement> {
    /// Who is calling.
    pub principal: Principal,
    /// Everything they may do (for checks beyond `P`, e.g. escalation).
    pub granted: PermissionSet,
    required: PhantomData<P>,
}

impl<P: Requirement> Authorized<P> {
    /// Opens the transaction of the caller's tenant (see [`Principal::begin`]).
    pub async fn begin(&self, state: &AppState) -> Result<TenantTx, ApiError> {
        self.principal.begin(state).await
    }
}

impl<'a, P: Requirement> ApiExtractor<'a> for Authorized<P> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        UserAuth::register(registry);
        if !NOT_FOR_API_KEYS.contains(P::PERMISSION) {
            ApiKeyAuth::register(registry);
        }
    }

    /// Named after the permission; rewritten to `UserAuth` (or `ApiKeyAuth`) +
    /// `x-permission` in the document.
    fn security_schemes() -> Vec<&'static str> {
        vec![P::PERMISSION.as_str()]
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let _ = (body, param_opts);
        let (principal, granted) = authenticate_and_authorize(request).await?;
        if principal.api_key.is_some() && NOT_FOR_API_KEYS.contains(P::PERMISSION) {
            return Err(not_for_keys().into());
        }
        require(granted, P::PERMISSION)?;
        Ok(Self {
            principal,
            granted,
            required: PhantomData,
        })
    }
}

/// A tenant-scoped request that may come from a signed-in user: `user` is `None` when it
/// has no `Authorization` header (an anonymous visitor), else the user and everything
/// they may do. A header that is present must hold a valid token of the addressed tenant:
/// a bad one is refused as it would be anywhere, never quietly taken for an anonymous
/// visitor. Documented as `UserAuth` with an anonymous alternative.
pub struct MaybeSignedIn {
    /// The tenant the request addresses.
    pub tenant: Arc<Tenant>,
    /// The signed-in caller and what they may do, if any.
    pub user: Option<(Principal, PermissionSet)>,
}

impl MaybeSignedIn {
    /// Opens the transaction of the addressed tenant. Commit it explicitly: dropped, it
    /// rolls back.
    pub async fn begin(&self, state: &AppState) -> Result<TenantTx, ApiError> {
        Ok(state.tenant_db.begin(self.tenant.id).await?)
    }

    /// What the caller may do (nothing, when anonymous).
    pub fn granted(&self) -> PermissionSet {
        self.user.as_ref().map_or(PermissionSet::EMPTY, |(_, g)| *g)
    }
}

impl<'a> ApiExtractor<'a> for MaybeSignedIn {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        UserAuth::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![USER_AUTH]
    }

    /// The anonymous alternative (an empty security requirement).
    fn has_security_fallback() -> bool {
        true
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let _ = (body, param_opts);
        if !request
            .headers()
            .contains_key(poem::http::header::AUTHORIZATION)
        {
            let tenant = CurrentTenant::resolve(request).await?;
            return Ok(Self { tenant, user: None });
        }
        // The tenant first, as for an anonymous visitor: a bad tenant is refused before a
        // bad token.
        let state = app_state(request)?;
        let tenant = crate::tenant::resolve(&state.tenants, request).await?;
        let (principal, cached) = authenticate_in(request, tenant.clone(), permission_keys).await?;
        let granted = authorize(state, &principal, cached).await?;
        Ok(Self {
            tenant,
            user: Some((principal, granted)),
        })
    }
}

/// The 403 for a caller lacking `permission`.
pub fn missing(permission: Permission) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "This operation requires the `{permission}` permission, which your roles do not grant."
        ),
    )
    .with_extension("permission", permission.as_str().into())
}
