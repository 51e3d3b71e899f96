//! The prune of every tenant's identity tables: sessions, refresh tokens, email tokens,
//! invitations and audit events past their retention (the statements, and exactly what
//! each keeps, are in [`crate::store::retention`]).
//!
//! * [`PruneTenants`] (`auth.prune_tenants`, a platform job, scheduled every
//!   `CANOPY_PRUNE_INTERVAL`) enqueues one [`PruneTenant`] per active tenant.
//! * [`PruneTenant`] (`auth.prune_tenant`, a tenant job) prunes that tenant only, through
//!   [`TenantDb::begin`]: one short transaction per batch ([`jobs::retention::in_batches`]),
//!   never one transaction for the whole tenant, so row locks and snapshots stay brief. The
//!   worker's own transaction is handed back unused.
//!
//! Counts go to the [`PruneObserver`] table by table, as each finishes.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use jobs::{
    Job, JobContext, JobError, JobKind, NewJob,
    retention::{PruneObserver, in_batches},
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::{Tenant, TenantDb, TenantId};

use crate::store::{StoreError, retention as sql};

/// How long a tenant's finished identity rows are kept, and how they are pruned.
#[derive(Clone)]
pub struct TenantRetention {
    /// Sessions and refresh tokens, after revocation or expiry.
    pub sessions: Duration,
    /// Email tokens, after use or expiry.
    pub email_tokens: Duration,
    /// Invitations, after acceptance, revocation or expiry.
    pub invitations: Duration,
    /// Audit events, by tenant (the plan's retention, else the global one).
    pub audit_events: Arc<dyn Fn(&Tenant) -> Duration + Send + Sync>,
    /// Rows one batch deletes at most.
    pub batch: i64,
    /// Told what was deleted.
    pub observer: Arc<dyn PruneObserver>,
}

/// What one tenant's prune deleted, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Refresh tokens.
    pub refresh_tokens: u64,
    /// Sessions.
    pub sessions: u64,
    /// Email tokens.
    pub email_tokens: u64,
    /// Invitations.
    pub invitations: u64,
    /// Audit events.
    pub audit_events: u64,
}

type Statement = for<'c> fn(
    &'c mut PgConnection,
    Duration,
    i64,
) -> tenancy::BoxFuture<'c, Result<u64, StoreError>>;

/// Runs `statement` batch after batch, each in a transaction of its own in `tenant`.
async fn batches(
    db: &TenantDb,
    tenant: TenantId,
    statement: Statement,
    retain: Duration,
    batch: i64,
) -> anyhow::Result<u64> {
    in_batches(batch, |batch| async move {
        let mut tx = db.begin(tenant).await?;
        let deleted = statement(&mut tx, retain, batch).await?;
        tx.commit().await?;
        Ok::<_, anyhow::Error>(deleted)
    })
    .await
}

/// Prunes `tenant`'s identity tables under `policy`, reporting each table's count to the
/// policy's observer as it finishes. Tokens go before sessions, so that those deleted are
/// counted as tokens rather than vanishing with their session.
pub async fn prune_tenant(
    db: &TenantDb,
    tenant: &Tenant,
    policy: &TenantRetention,
) -> anyhow::Result<Pruned> {
    // One table's statement, batch after batch, its count told to the observer.
    let prune = |what: &'static str, statement: Statement, retain: Duration| async move {
        let rows = batches(db, tenant.id, statement, retain, policy.batch)
            .await
            .with_context(|| format!("pruning {}", what.replace('_', " ")))?;
        policy.observer.pruned(what, rows);
        anyhow::Ok(rows)
    };
    // Both kinds of dead refresh token are counted as one.
    let batch = policy.batch;
    let expired = batches(
        db,
        tenant.id,
        |c, r, b| Box::pin(sql::prune_expired_refresh_tokens(c, r, b)),
        policy.sessions,
        batch,
    )
    .await
    .context("pruning expired refresh tokens")?;
    let revoked = batches(
        db,
        tenant.id,
        |c, r, b| Box::pin(sql::prune_revoked_refresh_tokens(c, r, b)),
        policy.sessions,
        batch,
    )
    .await
    .context("pruning refresh tokens of revoked sessions")?;
    let refresh_tokens = expired + revoked;
    policy.observer.pruned("refresh_tokens", refresh_tokens);
    let sessions = prune(
        "sessions",
        |c, r, b| Box::pin(sql::prune_sessions(c, r, b)),
        policy.sessions,
    )
    .await?;
    let email_tokens = prune(
        "email_tokens",
        |c, r, b| Box::pin(sql::prune_email_tokens(c, r, b)),
        policy.email_tokens,
    )
    .await?;
    let invitations = prune(
        "invitations",
        |c, r, b| Box::pin(sql::prune_invitations(c, r, b)),
        policy.invitations,
    )
    .await?;
    let audit_events = prune(
        "audit_events",
        |c, r, b| Box::pin(sql::prune_audit_events(c, r, b)),
        (policy.audit_events)(tenant),
    )
    .await?;
    Ok(Pruned {
        refresh_tokens,
        sessions,
        email_tokens,
        invitations,
        audit_events,
    })
}

/// Enqueues one [`PruneTenant`] per active tenant (payload `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneTenants {}

jobs::declare_job!(PruneTenants = "auth.prune_tenants");

impl PruneTenants {
    /// The fan-out, at most one pending.
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self.to_job()?.unique(Self::KIND))
    }
}

impl Job for PruneTenants {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = ();

    async fn run(self, ctx: &mut JobContext, _: &()) -> anyhow::Result<()> {
        let enqueued =
            jobs::enqueue_per_active_tenant(&ctx.control, |tenant| PruneTenant {}.new_job(tenant))
                .await?;
        tracing::info!(tenants = enqueued, "identity prune scheduled");
        Ok(())
    }
}

/// The prune of one tenant's identity tables (payload `{}`; the tenant is the job's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneTenant {}

jobs::declare_job!(PruneTenant = "auth.prune_tenant");

impl PruneTenant {
    /// The prune of `tenant`, at most one pending per tenant.
    pub fn new_job(&self, tenant: TenantId) -> Result<NewJob, JobError> {
        Ok(self
            .to_job()?
            .for_tenant(tenant)
            .unique(format!("{}:{}", Self::KIND, tenant.0)))
    }
}

impl Job for PruneTenant {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = TenantRetention;

    async fn run(self, ctx: &mut JobContext, policy: &TenantRetention) -> anyhow::Result<()> {
        let tenant = ctx
            .tenant
            .clone()
            .context("an identity prune needs a tenant")?;
        // Batches commit one by one in transactions of their own; the worker's would only
        // sit idle holding a connection.
        if let Some(tx) = ctx.take_tenant_tx() {
            tx.rollback().await?;
        }
        let pruned = prune_tenant(&ctx.control.tenant_db(), &tenant, policy).await?;
        if pruned != Pruned::default() {
            tracing::info!(?pruned, "pruned identity rows past their retention");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_payloads_and_keys_are_stable() {
        assert_eq!(PruneTenants::KIND, "auth.prune_tenants");
        assert_eq!(PruneTenant::KIND, "auth.prune_tenant");
        assert_eq!(
            serde_json::to_value(PruneTenant {}).unwrap(),
            serde_json::json!({})
        );
        let id = uuid::Uuid::now_v7();
        let job = format!("{:?}", PruneTenant {}.new_job(TenantId(id)).unwrap());
        assert!(
            job.contains(&format!("unique_key: Some(\"auth.prune_tenant:{id}\")")),
            "{job}"
        );
    }
}
