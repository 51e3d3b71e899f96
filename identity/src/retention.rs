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
use tenancy::{Tenant, TenantDb, TenantId, TenantStatus};

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
    let (id, batch) = (tenant.id, policy.batch);
    let report = |what: &'static str, rows: u64| {
        policy.observer.pruned(what, rows);
        rows
    };
    let expired = batches(
        db,
        id,
        |c, r, b| Box::pin(sql::prune_expired_refresh_tokens(c, r, b)),
        policy.sessions,
        batch,
    )
    .await
    .context("pruning expired refresh tokens")?;
    let revoked = batches(
        db,
        id,
        |c, r, b| Box::pin(sql::prune_revoked_refresh_tokens(c, r, b)),
        policy.sessions,
        batch,
    )
    .await
    .context("pruning refresh tokens of revoked sessions")?;
    let refresh_tokens = report("refresh_tokens", expired + revoked);
    let sessions = batches(
        db,
        id,
        |c, r, b| Box::pin(sql::prune_sessions(c, r, b)),
        policy.sessions,
        batch,
    )
    .await
    .context("pruning sessions")?;
    let sessions = report("sessions", sessions);
    let email_tokens = batches(
        db,
        id,
        |c, r, b| Box::pin(sql::prune_email_tokens(c, r, b)),
        policy.email_tokens,
        batch,
    )
    .await
    .context("pruning email tokens")?;
    let email_tokens = report("email_tokens", email_tokens);
    let invitations = batches(
        db,
        id,
        |c, r, b| Box::pin(sql::prune_invitations(c, r, b)),
        policy.invitations,
        batch,
    )
    .await
    .context("pruning invitations")?;
    let invitations = report("invitations", invitations);
    let audit = (policy.audit_events)(tenant);
    let audit_events = batches(
        db,
        id,
        |c, r, b| Box::pin(sql::prune_audit_events(c, r, b)),
        audit,
        batch,
    )
    .await
    .context("pruning audit events")?;
    let audit_events = report("audit_events", audit_events);
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
        let mut after: Option<String> = None;
        let mut enqueued = 0;
        loop {
            let tenants = ctx
                .control
                .list_tenants(Some(TenantStatus::Active), after.as_deref(), 500)
                .await?;
            let Some(last) = tenants.last() else { break };
            after = Some(last.slug.to_string());
            let mut conn = ctx.control.pool().acquire().await?;
            for tenant in &tenants {
                jobs::enqueue(&mut conn, PruneTenant {}.new_job(tenant.id)?).await?;
                enqueued += 1;
            }
        }
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
