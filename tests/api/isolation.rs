//! Adversarial isolation tests of `TenantDb` against the real PostgreSQL: what one tenant's
//! transaction can and cannot reach, and that nothing leaks through pooled connections.

use std::time::Duration;

use e2e::{TestApp, spawn_app};
use serde_json::Value;
use sqlx::Row;
use tenancy::{ControlDb, PoolSettings, Tenant, TenantDb};

/// A table that only tests create, in every given tenant schema, as the owner would in a
/// migration (default privileges grant it to the tenant role).
async fn create_items_table(app: &TestApp, tenants: &[&Tenant]) {
    for tenant in tenants {
        let sql = format!(
            r#"create table "{}".items (id int primary key, secret text not null)"#,
            tenant.schema_name()
        );
        sqlx::query(&sql)
            .execute(app.state.db.pool())
            .await
            .expect("create table");
    }
}

/// Tenants `alpha` and `bravo`, each with an empty `items` table.
async fn two_tenants_with_items(app: &TestApp) -> (Tenant, Tenant) {
    let (a, b) = (
        app.create_tenant("alpha").await,
        app.create_tenant("bravo").await,
    );
    create_items_table(app, &[&a, &b]).await;
    (a, b)
}

/// The SQLSTATE of a database error.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

async fn insert_item(db: &TenantDb, tenant: &Tenant, id: i32, secret: &str) {
    let mut tx = db.begin(tenant.id).await.expect("begin");
    sqlx::query("insert into items (id, secret) values ($1, $2)")
        .bind(id)
        .bind(secret)
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
}

async fn read_item(db: &TenantDb, tenant: &Tenant, id: i32) -> Vec<String> {
    let mut tx = db.begin(tenant.id).await.expect("begin");
    let rows: Vec<String> = sqlx::query_scalar("select secret from items where id = $1")
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .expect("select");
    tx.commit().await.expect("commit");
    rows
}

/// A second handle on the test database whose pool has exactly one connection, so every
/// transaction reuses the connection the previous one returned.
fn single_connection(app: &TestApp) -> ControlDb {
    ControlDb::connect_lazy(&PoolSettings {
        connect: app.settings.database.connect.clone(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(10),
        max_lifetime: Duration::from_secs(600),
    })
}

#[tokio::test]
async fn same_ids_in_two_tenants_stay_apart() {
    let app = spawn_app().await;
    let (a, b) = two_tenants_with_items(&app).await;
    let db = &app.state.tenant_db;
    insert_item(db, &a, 1, "alpha-secret").await;
    insert_item(db, &b, 1, "bravo-secret").await;
    assert_eq!(read_item(db, &a, 1).await, ["alpha-secret"]);
    assert_eq!(read_item(db, &b, 1).await, ["bravo-secret"]);
}

#[tokio::test]
async fn naming_another_schema_or_the_control_plane_is_permission_denied() {
    let app = spawn_app().await;
    let (a, b) = two_tenants_with_items(&app).await;
    insert_item(&app.state.tenant_db, &b, 1, "bravo-secret").await;

    for sql in [
        format!(r#"select secret from "{}".items"#, b.schema_name()),
        format!(
            r#"insert into "{}".items values (2, 'planted')"#,
            b.schema_name()
        ),
        "select slug from public.tenants".to_owned(),
        "select key_hash from public.platform_api_keys".to_owned(),
        format!(r#"create table "{}".planted (id int)"#, a.schema_name()),
    ] {
        let mut tx = app.state.tenant_db.begin(a.id).await.expect("begin");
        let err = sqlx::query(&sql).execute(&mut *tx).await.expect_err(&sql);
        let code = sqlstate(&err);
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    assert_eq!(
        read_item(&app.state.tenant_db, &b, 2).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_table_missing_from_the_tenant_never_resolves_elsewhere() {
    let app = spawn_app().await;
    let a = app.create_tenant("alpha").await;
    // `tenants` exists in public, but the search path holds the tenant schema alone.
    let mut tx = app.state.tenant_db.begin(a.id).await.expect("begin");
    let err = sqlx::query("select slug from tenants")
        .execute(&mut *tx)
        .await
        .expect_err("no such table");
    let code = sqlstate(&err);
    assert_eq!(code.as_deref(), Some("42P01"), "{err}");
}

#[tokio::test]
async fn role_and_search_path_reset_after_commit_rollback_error_and_cancellation() {
    let app = spawn_app().await;
    let a = app.create_tenant("alpha").await;
    let control = single_connection(&app);
    let tenant_db = control.tenant_db();
    let baseline = || async {
        let row =
            sqlx::query("select current_user::text as who, current_setting('search_path') as path")
                .fetch_one(control.pool())
                .await
                .expect("baseline query");
        (row.get::<String, _>("who"), row.get::<String, _>("path"))
    };
    let expected = baseline().await;
    assert!(!expected.0.starts_with("t_"));

    let inside = |mut tx: tenancy::TenantTx| async move {
        let who: String = sqlx::query_scalar("select current_user::text")
            .fetch_one(&mut *tx)
            .await
            .expect("who");
        (who, tx)
    };

    // Commit.
    let (who, tx) = inside(tenant_db.begin(a.id).await.expect("begin")).await;
    assert_eq!(who, a.schema_name());
    tx.commit().await.expect("commit");
    assert_eq!(baseline().await, expected, "after commit");

    // Rollback.
    let (_, tx) = inside(tenant_db.begin(a.id).await.expect("begin")).await;
    tx.rollback().await.expect("rollback");
    assert_eq!(baseline().await, expected, "after rollback");

    // An error, then the transaction dropped.
    let mut tx = tenant_db.begin(a.id).await.expect("begin");
    assert!(
        sqlx::query("select * from no_such_table")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    assert_eq!(baseline().await, expected, "after error");

    // A request future dropped in the middle of a query: the connection is discarded,
    // never handed back acting as the tenant.
    let mut tx = tenant_db.begin(a.id).await.expect("begin");
    let cancelled = tokio::time::timeout(Duration::from_millis(200), async {
        sqlx::query("select pg_sleep(5)").execute(&mut *tx).await
    })
    .await;
    assert!(cancelled.is_err(), "the query should have been cancelled");
    drop(tx);
    assert_eq!(baseline().await, expected, "after cancellation");

    // A `begin` that fails half-way (the role does not exist) leaves nothing behind either.
    assert!(tenant_db.begin(tenancy::TenantId::new()).await.is_err());
    assert_eq!(baseline().await, expected, "after a failed begin");

    // A `begin` dropped before it completes: polled once (the statement goes out, no
    // answer can be back yet), then dropped.
    let dropped = futures_util::FutureExt::now_or_never(tenant_db.begin(a.id));
    assert!(
        dropped.is_none(),
        "begin completed without waiting for the server"
    );
    assert_eq!(baseline().await, expected, "after a dropped begin");
    control.close().await;
}

#[tokio::test]
async fn alternating_tenants_on_one_connection_with_the_same_statements() {
    let app = spawn_app().await;
    let (a, b) = two_tenants_with_items(&app).await;
    insert_item(&app.state.tenant_db, &a, 7, "alpha-7").await;
    insert_item(&app.state.tenant_db, &b, 7, "bravo-7").await;

    let control = single_connection(&app);
    let tenant_db = control.tenant_db();
    for round in 0..20 {
        let (tenant, expected) = if round % 2 == 0 {
            (&a, "alpha-7")
        } else {
            (&b, "bravo-7")
        };
        // Same SQL text every time, so sqlx reuses its prepared statement across schemas.
        assert_eq!(
            read_item(&tenant_db, tenant, 7).await,
            [expected],
            "round {round}"
        );
    }
    control.close().await;
}

#[tokio::test]
async fn fifty_tenants_at_once_each_see_only_their_own() {
    let app = spawn_app().await;
    let mut tenants = Vec::new();
    for i in 0..50 {
        let tenant = app.create_tenant(&format!("tenant-{i:02}")).await;
        let mut tx = app.state.tenant_db.begin(tenant.id).await.expect("begin");
        sqlx::query("update settings set timezone = $1")
            .bind(format!("Zone/{}", tenant.slug))
            .execute(&mut *tx)
            .await
            .expect("update");
        tx.commit().await.expect("commit");
        tenants.push(tenant);
    }
    let requests = tenants.iter().map(|tenant| {
        let app = &app;
        async move {
            let body: Value = app
                .get_as(tenant.slug.as_str(), "/v1/tenant")
                .await
                .json()
                .await
                .expect("json");
            (tenant, body)
        }
    });
    for (tenant, body) in futures_util::future::join_all(requests).await {
        assert_eq!(body["id"], tenant.id.to_string());
        assert_eq!(
            body["settings"]["timezone"],
            format!("Zone/{}", tenant.slug)
        );
    }
}

#[tokio::test]
async fn one_connection_serves_every_tenant() {
    // A pool of one connection: with a pool per tenant, the second tenant would starve.
    let app = TestApp::builder()
        .env("database_max_connections", "1")
        .spawn()
        .await;
    for i in 0..12 {
        let tenant = app.create_tenant(&format!("pool-{i:02}")).await;
        let body: Value = app
            .get_as(tenant.slug.as_str(), "/v1/tenant")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(body["id"], tenant.id.to_string());
    }
    assert_eq!(app.state.db.status().size, 1);
}
