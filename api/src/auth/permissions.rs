//! Authorization: every tenant endpoint names the permission it needs in its signature,
//! `auth: Authorized<perm::ProductsWrite>`, and nothing else. The extractor authenticates
//! the caller ([`UserAuth`]), then checks the permission before the handler runs (403
//! `forbidden` naming the missing permission). The same type puts the permission into the
//! OpenAPI document: its security requirement is named after the permission, and
//! [`crate::routes::openapi_json`] folds that back into `UserAuth` plus an
//! `x-permission` member and a line in the operation's description.
//!
//! Effective permissions are cached in Redis per user: `canopy:t:<tenant>:perms:u:<user>`
//! holds `<generation> <names>`, valid only while `canopy:t:<tenant>:perms:gen` still holds
//! the same generation. Every change to roles or assignments commits, then sets a fresh
//! random generation, which invalidates every cached entry of the tenant at once (one
//! write, no scan). A reader that computed its entry from the database before the change
//! committed stores it under the old generation, so it can never be served after the
//! change. Redis unreachable: permissions come from the database.

use std::{marker::PhantomData, sync::Arc, time::Duration};

use poem::{Request, RequestBody};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, registry::Registry};
use rbac::{Permission, PermissionSet};
use tenancy::{TenantDb, TenantId};
use uuid::Uuid;

use crate::{
    auth::{Principal, UserAuth},
    error::{ApiError, ErrorCode},
    redis::{RedisError, RedisPool, mget, retry_in_background, with_redis},
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
);

/// A request by a user who holds permission `P` in the tenant it addresses.
pub struct Authorized<P: Requirement> {
    /// Who is calling.
    pub principal: Principal,
    /// Everything they may do (for checks beyond `P`, e.g. escalation).
    pub granted: PermissionSet,
    required: PhantomData<P>,
}

impl<'a, P: Requirement> ApiExtractor<'a> for Authorized<P> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        UserAuth::register(registry);
    }

    /// Named after the permission; rewritten to `UserAuth` + `x-permission` in the document.
    fn security_schemes() -> Vec<&'static str> {
        vec![P::PERMISSION.as_str()]
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let _ = (body, param_opts);
        let (principal, granted) = super::authenticate(request, true).await?;
        let granted = granted
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("permissions were not looked up")))?;
        if !granted.contains(P::PERMISSION) {
            return Err(missing(P::PERMISSION).into());
        }
        Ok(Self {
            principal,
            granted,
            required: PhantomData,
        })
    }
}

/// A request that may come from a signed-in user: `None` when it has no `Authorization`
/// header (an anonymous visitor), else the user and everything they may do. A header
/// that is present must hold a valid token of the addressed tenant: a bad one is refused
/// as it would be anywhere, never quietly taken for an anonymous visitor. Documented as
/// `UserAuth` with an anonymous alternative.
pub struct MaybeSignedIn(pub Option<(Principal, PermissionSet)>);

impl MaybeSignedIn {
    /// What the caller may do (nothing, when anonymous).
    pub fn granted(&self) -> PermissionSet {
        self.0.as_ref().map_or(PermissionSet::EMPTY, |(_, g)| *g)
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
        vec![crate::routes::USER_AUTH]
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
            return Ok(Self(None));
        }
        let (principal, granted) = super::authenticate(request, true).await?;
        let granted = granted
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("permissions were not looked up")))?;
        Ok(Self(Some((principal, granted))))
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

/// How long a generation lives when nothing changes.
const GENERATION_TTL_SECS: u64 = 86_400;

fn generation_key(tenant: TenantId) -> String {
    format!("canopy:t:{tenant}:perms:gen")
}

fn user_key(tenant: TenantId, user: Uuid) -> String {
    format!("canopy:t:{tenant}:perms:u:{user}")
}

/// Effective permissions per user, cached in Redis (see the module documentation).
pub struct Permissions {
    redis: RedisPool,
    tenant_db: TenantDb,
    ttl: Duration,
}

impl Permissions {
    /// Cached entries live for `ttl`, which also bounds how long an invalidation Redis
    /// refused is retried.
    pub fn new(redis: RedisPool, tenant_db: TenantDb, ttl: Duration) -> Self {
        Self {
            redis,
            tenant_db,
            ttl,
        }
    }

    /// What `user` may do in `tenant`.
    pub async fn of(&self, tenant: TenantId, user: Uuid) -> Result<PermissionSet, ApiError> {
        let keys = Self::keys(tenant, user);
        let looked_up = mget(&self.redis, &keys).await;
        self.of_looked_up(tenant, user, looked_up.as_deref()).await
    }

    /// The keys [`Self::of_looked_up`] needs, in order.
    pub fn keys(tenant: TenantId, user: Uuid) -> [String; 2] {
        [generation_key(tenant), user_key(tenant, user)]
    }

    /// [`Self::of`] with the values of [`Self::keys`] already fetched, or the error
    /// fetching them.
    pub async fn of_looked_up(
        &self,
        tenant: TenantId,
        user: Uuid,
        looked_up: Result<&[Option<String>], &RedisError>,
    ) -> Result<PermissionSet, ApiError> {
        let cached = match looked_up {
            Ok([generation, entry]) => Ok((generation.clone(), entry.clone())),
            Ok(other) => Err(format!("{} values for 2 keys", other.len())),
            Err(error) => Err(error.to_string()),
        };
        let reachable = cached.is_ok();
        let generation = match cached {
            Ok((Some(generation), Some(entry))) => {
                if let Some(names) = entry
                    .strip_prefix(generation.as_str())
                    .and_then(|rest| rest.strip_prefix(' '))
                {
                    return Ok(PermissionSet::from_names(
                        names.split(',').filter(|n| !n.is_empty()),
                    )
                    .0);
                }
                Some(generation)
            }
            Ok((generation, None)) => generation,
            Ok((None, Some(_))) => None,
            Err(error) => {
                tracing::warn!(%error, "permission cache unreachable; reading the database");
                None
            }
        };
        let granted = self.load(tenant, user).await?;
        match generation {
            Some(generation) => {
                let entry = format!("{generation} {}", granted.names().join(","));
                let ttl = self.ttl.as_secs().max(1);
                let stored = with_redis(&self.redis, |mut conn| async move {
                    redis::cmd("SET")
                        .arg(user_key(tenant, user))
                        .arg(entry)
                        .arg("EX")
                        .arg(ttl)
                        .query_async::<()>(&mut *conn)
                        .await
                })
                .await;
                if let Err(error) = stored {
                    tracing::debug!(%error, "permission cache write failed");
                }
            }
            // No generation yet (a new tenant, or Redis lost its data): start one. Entries
            // are only ever stored under a generation that exists.
            None if reachable => {
                let _ = self.start_generation(tenant, true).await;
            }
            None => {}
        }
        Ok(granted)
    }

    async fn load(&self, tenant: TenantId, user: Uuid) -> Result<PermissionSet, ApiError> {
        let mut tx = self.tenant_db.begin(tenant).await?;
        let granted = rbac::store::user_permissions(&mut tx, user)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        Ok(granted)
    }

    /// Voids every cached entry of `tenant`. Call after committing a change to roles or
    /// role assignments; a refused write is retried in the background until the entries
    /// it must void have expired anyway.
    pub async fn invalidate(self: &Arc<Self>, tenant: TenantId) {
        let Err(error) = self.start_generation(tenant, false).await else {
            return;
        };
        tracing::warn!(%error, %tenant, "permission cache invalidation failed; retrying in the background");
        let this = self.clone();
        retry_in_background(self.ttl, "invalidating the permission cache", move || {
            let this = this.clone();
            async move { this.start_generation(tenant, false).await }
        });
    }

    /// Sets a fresh random generation (only when there is none, with `only_if_absent`).
    async fn start_generation(
        &self,
        tenant: TenantId,
        only_if_absent: bool,
    ) -> Result<(), RedisError> {
        let generation = Uuid::new_v4().simple().to_string();
        with_redis(&self.redis, |mut conn| async move {
            let mut cmd = redis::cmd("SET");
            // Expiring is safe (a new generation voids everything cached under the old)
            // and keeps a purged tenant from leaving its key behind forever.
            cmd.arg(generation_key(tenant))
                .arg(generation)
                .arg("EX")
                .arg(GENERATION_TTL_SECS);
            if only_if_absent {
                cmd.arg("NX");
            }
            cmd.query_async::<()>(&mut *conn).await
        })
        .await
    }
}
