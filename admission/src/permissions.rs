//! The permission cache: what each user may do, cached in Redis per user.
//! `canopy:t:<tenant>:perms:u:<user>` holds `<generation> <names>`, valid only while
//! `canopy:t:<tenant>:perms:gen` still holds the same generation. Every change to roles or
//! assignments commits, then sets a fresh random generation, which invalidates every cached
//! entry of the tenant at once (one write, no scan). A reader that computed its entry from
//! the database before the change committed stores it under the old generation, so it can
//! never be served after the change. Redis unreachable: permissions come from the database.
//!
//! The checks built on it (`api`'s authorization) read the cached entries in
//! authentication's round trip ([`Permissions::keys`], [`Permissions::of_looked_up`]).

use std::{sync::Arc, time::Duration};

use rbac::PermissionSet;
use tenancy::{TenantDb, TenantId};
use uuid::Uuid;

use crate::{
    AdmissionError,
    redis::{RedisError, RedisPool, mget, retry_in_background, with_redis},
};

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
    pub async fn of(&self, tenant: TenantId, user: Uuid) -> Result<PermissionSet, AdmissionError> {
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
    ) -> Result<PermissionSet, AdmissionError> {
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

    async fn load(&self, tenant: TenantId, user: Uuid) -> Result<PermissionSet, AdmissionError> {
        let mut tx = self.tenant_db.begin(tenant).await?;
        let granted = rbac::store::user_permissions(&mut tx, user).await?;
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
