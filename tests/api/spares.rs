//! The pool of spare tenant schemas: provisioning claims one (id, schema and ledger) inside
//! its one transaction, a failed claim leaves the spare a spare, a lagging spare is brought
//! current by the claim and a changed one is discarded, replenishing stops at its target
//! however many run at once, `canopy migrate`'s spare pass, and nothing reaches a spare.

use std::{borrow::Cow, sync::Arc};

use e2e::{TestApp, spawn_app};
use tenancy::{
    BoxFuture, TenancyError, TenantId, TenantSeed, TenantSlug, TenantTx,
    migrate::{TenantMigration, embedded_migrations},
};
use uuid::Uuid;

fn slug(s: &str) -> TenantSlug {
    TenantSlug::parse(s).expect("slug")
}

fn extra_migration(version: i64, sql: &'static str) -> TenantMigration {
    TenantMigration {
        version,
        description: Cow::Borrowed("test migration"),
        sql: Cow::Borrowed(sql),
        checksum: Cow::Owned(version.to_be_bytes().to_vec()),
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.state.db.pool())
        .await
        .expect(sql)
}

async fn count_for(app: &TestApp, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(app.state.db.pool())
        .await
        .expect(sql)
}

async fn spare_ids(app: &TestApp) -> Vec<Uuid> {
    sqlx::query_scalar("select id from public.tenant_spares order by created_at, id")
        .fetch_all(app.state.db.pool())
        .await
        .expect("spares")
}

async fn ledger(app: &TestApp, table: &str, column: &str, id: Uuid) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as(&format!(
        "select version, checksum from public.{table} where {column} = $1 order by version"
    ))
    .bind(id)
    .fetch_all(app.state.db.pool())
    .await
    .expect("ledger")
}

fn embedded_ledger() -> Vec<(i64, Vec<u8>)> {
    embedded_migrations()
        .into_iter()
        .map(|m| (m.version, m.checksum.into_owned()))
        .collect()
}

/// Whether the schema and the role of `id` exist.
async fn objects_exist(app: &TestApp, id: Uuid) -> (bool, bool) {
    let name = TenantId(id).schema_name();
    let schema: bool =
        sqlx::query_scalar("select exists (select 1 from pg_namespace where nspname = $1)")
            .bind(&name)
            .fetch_one(app.state.db.pool())
            .await
            .expect("schema");
    let role: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(&name)
            .fetch_one(app.state.db.pool())
            .await
            .expect("role");
    (schema, role)
}

async fn replenish_jobs(app: &TestApp) -> i64 {
    count(
        app,
        "select count(*) from public.jobs
         where kind = 'tenancy.replenish_spares' and status = 'queued' and tenant_id is null",
    )
    .await
}

#[tokio::test]
async fn provisioning_claims_a_spare_and_its_ledger_and_asks_for_a_refill() {
    let app = TestApp::builder().env("tenant_spares", "2").spawn().await;
    let db = &app.state.db;
    assert_eq!(db.replenish_spares(2).await.expect("replenish"), 2);
    let spares = spare_ids(&app).await;
    assert_eq!(spares.len(), 2);
    assert_eq!(
        ledger(&app, "spare_migrations", "spare_id", spares[0]).await,
        embedded_ledger()
    );
    assert_eq!(replenish_jobs(&app).await, 0);

    let tenant = app.create_tenant("claimed").await;
    assert_eq!(tenant.id.0, spares[0], "the oldest spare is claimed");
    assert_eq!(spare_ids(&app).await, [spares[1]]);
    assert_eq!(
        ledger(&app, "spare_migrations", "spare_id", spares[0]).await,
        []
    );
    assert_eq!(
        ledger(&app, "tenant_migrations", "tenant_id", tenant.id.0).await,
        embedded_ledger()
    );
    assert_eq!(objects_exist(&app, tenant.id.0).await, (true, true));
    // The tenant is served, with the rows its migrations seed (the system roles).
    let response = app.get_as("claimed", "/v1/tenant").await;
    assert_eq!(response.status(), 200);
    let roles = count(
        &app,
        &format!(r#"select count(*) from "{}".roles"#, tenant.schema_name()),
    )
    .await;
    assert!(roles > 0, "the system roles are in the claimed schema");

    // The claim asked for a refill, once however many claims ask; the job refills to the
    // target.
    app.create_tenant("claimed-too").await;
    assert!(spare_ids(&app).await.is_empty());
    assert_eq!(replenish_jobs(&app).await, 1);
    app.run_jobs().await;
    assert_eq!(spare_ids(&app).await.len(), 2);
    assert_eq!(replenish_jobs(&app).await, 0);
}

#[tokio::test]
async fn without_a_spare_the_tenant_is_built_from_scratch_in_the_same_way() {
    let app = spawn_app().await;
    assert_eq!(app.state.db.spare_count().await.expect("count"), 0);
    let tenant = app.create_tenant("scratch").await;
    assert_eq!(
        ledger(&app, "tenant_migrations", "tenant_id", tenant.id.0).await,
        embedded_ledger()
    );
    assert_eq!(objects_exist(&app, tenant.id.0).await, (true, true));
    assert_eq!(app.get_as("scratch", "/v1/tenant").await.status(), 200);
    // With the pool off (the tests' default), nothing asks for a refill.
    assert_eq!(replenish_jobs(&app).await, 0);
}

#[tokio::test]
async fn a_claim_of_a_lagging_spare_applies_the_missing_migration_within_it() {
    let app = spawn_app().await;
    let db = &app.state.db;
    db.replenish_spares(1).await.expect("replenish");
    let spare = spare_ids(&app).await[0];
    let mut newer = embedded_migrations();
    newer.push(extra_migration(
        99_990_000_000_001,
        "create table widgets (id bigint primary key, name text not null)",
    ));
    let tenant = db
        .create_tenant_with(&slug("lagging"), "Lagging", &newer)
        .await
        .expect("provision");
    assert_eq!(tenant.id.0, spare);
    let versions: Vec<i64> = ledger(&app, "tenant_migrations", "tenant_id", spare)
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(versions.last(), Some(&99_990_000_000_001));
    assert_eq!(versions.len(), newer.len());
    let widgets: bool = sqlx::query_scalar("select to_regclass($1) is not null")
        .bind(format!(r#""{}".widgets"#, tenant.schema_name()))
        .fetch_one(db.pool())
        .await
        .expect("widgets");
    assert!(widgets, "the missing migration ran in the claimed schema");
}

#[tokio::test]
async fn a_spare_with_a_changed_migration_is_discarded_and_the_tenant_built_from_scratch() {
    let app = spawn_app().await;
    let db = &app.state.db;
    db.replenish_spares(1).await.expect("replenish");
    let spare = spare_ids(&app).await[0];
    let mut changed = embedded_migrations();
    changed[0].checksum = Cow::Owned(vec![0; 48]);
    let tenant = db
        .create_tenant_with(&slug("fresh"), "Fresh", &changed)
        .await
        .expect("provisioned from scratch");
    assert_ne!(tenant.id.0, spare);
    assert!(spare_ids(&app).await.is_empty());
    assert_eq!(
        objects_exist(&app, spare).await,
        (false, false),
        "the stale spare's schema and role are gone"
    );
    assert_eq!(
        ledger(&app, "tenant_migrations", "tenant_id", tenant.id.0).await[0].1,
        vec![0; 48]
    );
}

/// A seed that fails (a duplicate key).
struct FailingSeed;

impl TenantSeed for FailingSeed {
    fn name(&self) -> &'static str {
        "failing"
    }

    fn seed<'a>(&'a self, tx: &'a mut TenantTx) -> BoxFuture<'a, Result<(), TenancyError>> {
        Box::pin(async move {
            sqlx::query("insert into settings (id) values (true)")
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_failed_claim_leaves_the_spare_a_spare_and_no_tenant() {
    let app = spawn_app().await;
    let db = &app.state.db;
    app.create_tenant("taken").await;
    db.replenish_spares(1).await.expect("replenish");
    let spare = spare_ids(&app).await[0];

    let err = db
        .create_tenant(&slug("taken"), "Again")
        .await
        .expect_err("the slug is taken");
    assert!(
        matches!(&err, TenancyError::SlugTaken(s) if s == "taken"),
        "{err:?}"
    );
    let seeded = db.clone().with_seeds(vec![Arc::new(FailingSeed)]);
    seeded
        .create_tenant(&slug("doomed"), "Doomed")
        .await
        .expect_err("the seed fails");

    assert_eq!(spare_ids(&app).await, [spare]);
    assert_eq!(
        ledger(&app, "spare_migrations", "spare_id", spare).await,
        embedded_ledger()
    );
    assert_eq!(
        count_for(
            &app,
            "select count(*) from public.tenants where id = $1",
            spare
        )
        .await,
        0
    );
    assert_eq!(
        count_for(
            &app,
            "select count(*) from public.tenant_migrations where tenant_id = $1",
            spare
        )
        .await,
        0
    );
    assert_eq!(objects_exist(&app, spare).await, (true, true));
    // And it is claimed by the next provisioning that succeeds.
    assert_eq!(app.create_tenant("fine").await.id.0, spare);
}

#[tokio::test]
async fn concurrent_replenishers_fill_to_the_target_and_not_beyond() {
    let app = spawn_app().await;
    let db = &app.state.db;
    let (a, b) = tokio::join!(db.replenish_spares(3), db.replenish_spares(3));
    let built = a.expect("first") + b.expect("second");
    assert_eq!(built, 3);
    assert_eq!(db.spare_count().await.expect("count"), 3);
    assert_eq!(db.replenish_spares(3).await.expect("again"), 0);
    assert_eq!(db.replenish_spares(2).await.expect("lower"), 0);
    assert_eq!(db.spare_count().await.expect("count"), 3);
    // Every spare is complete: schema, role and ledger.
    for spare in spare_ids(&app).await {
        assert_eq!(objects_exist(&app, spare).await, (true, true));
        assert_eq!(
            ledger(&app, "spare_migrations", "spare_id", spare).await,
            embedded_ledger()
        );
    }
}

#[tokio::test]
async fn migrating_brings_spares_current_and_drops_those_that_cannot_be() {
    let app = spawn_app().await;
    let db = &app.state.db;
    db.replenish_spares(2).await.expect("replenish");
    let spares = spare_ids(&app).await;

    let current = db
        .migrate_spares(&embedded_migrations())
        .await
        .expect("migrate");
    assert_eq!(
        (current.migrated, current.current, current.dropped),
        (0, 2, 0)
    );

    let mut newer = embedded_migrations();
    newer.push(extra_migration(
        99_990_000_000_002,
        "create table gadgets (id bigint primary key)",
    ));
    let moved = db.migrate_spares(&newer).await.expect("migrate");
    assert_eq!((moved.migrated, moved.current, moved.dropped), (2, 0, 0));
    for spare in &spares {
        let versions = ledger(&app, "spare_migrations", "spare_id", *spare).await;
        assert_eq!(versions.last().map(|v| v.0), Some(99_990_000_000_002));
    }
    // Tenants and spares are separate: the tenants' pass saw no spare.
    let tenants = db
        .migrate_tenants(&newer, 2, |_| {})
        .await
        .expect("tenants");
    assert_eq!((tenants.migrated, tenants.current), (0, 0));

    let mut changed = newer.clone();
    changed[0].checksum = Cow::Owned(vec![0; 48]);
    let dropped = db.migrate_spares(&changed).await.expect("migrate");
    assert_eq!(dropped.dropped, 2);
    assert!(spare_ids(&app).await.is_empty());
    for spare in spares {
        assert_eq!(objects_exist(&app, spare).await, (false, false));
    }
}

#[tokio::test]
async fn a_spare_is_unreachable_and_a_claimed_one_holds_only_its_own_seeds() {
    let app = spawn_app().await;
    let db = &app.state.db;
    let cold = app.create_tenant("cold").await;
    db.replenish_spares(1).await.expect("replenish");
    let spare = spare_ids(&app).await[0];
    let spare_id = TenantId(spare);

    // Nothing resolves to it, lists it, or purges it.
    for reference in [
        spare.to_string(),
        spare.simple().to_string(),
        spare_id.schema_name(),
    ] {
        let response = app.get_as(&reference, "/v1/tenant").await;
        assert!(
            response.status().is_client_error(),
            "{reference}: {}",
            response.status()
        );
    }
    assert!(db.tenant_by_id(spare_id).await.expect("lookup").is_none());
    let listed = db.list_tenants(None, None, 100).await.expect("list");
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [cold.id]);
    let cutoff = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(db.purge_deleted_tenants(cutoff).await.expect("purge"), []);
    assert_eq!(spare_ids(&app).await, [spare]);
    db.ensure_tenants_current()
        .await
        .expect("spares are not tenants");

    // Claimed, its schema holds exactly what a tenant built from scratch holds.
    let claimed = app.create_tenant("warm").await;
    assert_eq!(claimed.id.0, spare);
    assert_eq!(app.get_as("warm", "/v1/tenant").await.status(), 200);
    let tables: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = $1 order by tablename",
    )
    .bind(cold.schema_name())
    .fetch_all(db.pool())
    .await
    .expect("tables");
    assert!(!tables.is_empty());
    let mut seeded = 0;
    for table in &tables {
        let rows = |schema: String| {
            let sql = format!(r#"select count(*) from "{schema}"."{table}""#);
            let app = &app;
            async move { count(app, &sql).await }
        };
        let (from_spare, from_scratch) = (
            rows(claimed.schema_name()).await,
            rows(cold.schema_name()).await,
        );
        assert_eq!(from_spare, from_scratch, "rows of {table}");
        seeded += from_spare;
    }
    assert!(
        seeded > 0,
        "the seed rows (settings, system roles) are there"
    );
}
