//! Provisioning is all or nothing; tenant migrations run in lockstep, isolate failures,
//! resume, and gate the server's start.

use std::{borrow::Cow, sync::Arc};

use api::Application;
use e2e::{TestApp, spawn_app};
use tenancy::{
    BoxFuture, TenancyError, TenantSeed, TenantSlug, TenantTx,
    migrate::{TenantMigration, embedded_migrations},
};

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

async fn leftovers(app: &TestApp) -> (i64, i64, i64) {
    (
        count(app, "select count(*) from public.tenants").await,
        count(
            app,
            "select count(*) from pg_namespace where nspname like 't\\_%'",
        )
        .await,
        count(app, "select count(*) from public.tenant_migrations").await,
    )
}

/// A seed that notes which tenant it ran for, then fails (a duplicate key).
#[derive(Default)]
struct FailingSeed {
    tenant: std::sync::Mutex<Option<tenancy::TenantId>>,
}

impl TenantSeed for FailingSeed {
    fn name(&self) -> &'static str {
        "failing"
    }

    fn seed<'a>(&'a self, tx: &'a mut TenantTx) -> BoxFuture<'a, Result<(), TenancyError>> {
        Box::pin(async move {
            *self.tenant.lock().expect("lock") = Some(tx.tenant_id());
            sqlx::query("insert into settings (id) values (true)")
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_failed_provisioning_leaves_nothing_behind() {
    let app = spawn_app().await;
    let slug = TenantSlug::parse("doomed").expect("slug");

    // A tenant migration that fails halfway.
    let mut broken = embedded_migrations();
    broken.push(extra_migration(
        i64::MAX,
        "create table ok_so_far (id int); select 1/0;",
    ));
    let err = app
        .state
        .db
        .create_tenant_with(&slug, "Doomed", &broken)
        .await
        .expect_err("division by zero");
    assert!(matches!(err, TenancyError::Database(_)), "{err:?}");
    assert_eq!(leftovers(&app).await, (0, 0, 0));

    // A seed that fails after every migration succeeded.
    let seed = Arc::new(FailingSeed::default());
    let seeded = app.state.db.clone().with_seeds(vec![seed.clone()]);
    assert!(seeded.create_tenant(&slug, "Doomed").await.is_err());
    assert_eq!(leftovers(&app).await, (0, 0, 0));
    // Roles are cluster-wide, so look for this attempt's role by name.
    let attempted = seed.tenant.lock().expect("lock").expect("the seed ran");
    let role: i64 = sqlx::query_scalar("select count(*) from pg_roles where rolname = $1")
        .bind(attempted.schema_name())
        .fetch_one(app.state.db.pool())
        .await
        .expect("role count");
    assert_eq!(role, 0, "the tenant role survived the rollback");

    // The slug is free again.
    app.state
        .db
        .create_tenant(&slug, "Fine")
        .await
        .expect("provision");
}

#[tokio::test]
async fn one_failing_tenant_does_not_stop_the_others_and_a_rerun_finishes() {
    let app = spawn_app().await;
    let tenants = [
        app.create_tenant("one").await,
        app.create_tenant("two").await,
        app.create_tenant("three").await,
    ];
    // Sabotage `two`: the new migration creates a table it already has.
    let sabotage = format!(
        r#"create table "{}".widgets (id int)"#,
        tenants[1].schema_name()
    );
    sqlx::query(&sabotage)
        .execute(app.state.db.pool())
        .await
        .expect("sabotage");

    let mut migrations = embedded_migrations();
    migrations.push(extra_migration(
        99_990_000_000_001,
        "create table widgets (id bigint primary key, name text not null)",
    ));
    let seen = std::sync::Mutex::new(Vec::new());
    let summary = app
        .state
        .db
        .migrate_tenants(&migrations, 4, |outcome| {
            seen.lock().expect("lock").push(outcome.slug.clone())
        })
        .await
        .expect("run");
    assert_eq!(summary.migrated, 2);
    assert_eq!(summary.current, 0);
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].0, "two");
    assert!(
        summary.failed[0].1.contains("widgets"),
        "{}",
        summary.failed[0].1
    );
    assert_eq!(seen.lock().expect("lock").len(), 3);
    let has_new = |tenant: &tenancy::Tenant| {
        let sql = format!(
            "select count(*) from public.tenant_migrations where tenant_id = '{}' and version = 99990000000001",
            tenant.id
        );
        let app = &app;
        async move { count(app, &sql).await }
    };
    assert_eq!(
        (
            has_new(&tenants[0]).await,
            has_new(&tenants[1]).await,
            has_new(&tenants[2]).await
        ),
        (1, 0, 1)
    );

    // Fix `two` and run again: only `two` moves; a third run changes nothing.
    let fix = format!(r#"drop table "{}".widgets"#, tenants[1].schema_name());
    sqlx::query(&fix)
        .execute(app.state.db.pool())
        .await
        .expect("fix");
    let again = app
        .state
        .db
        .migrate_tenants(&migrations, 4, |_| {})
        .await
        .expect("rerun");
    assert_eq!(
        (again.migrated, again.current, again.failed.len()),
        (1, 2, 0)
    );
    let idle = app
        .state
        .db
        .migrate_tenants(&migrations, 4, |_| {})
        .await
        .expect("third run");
    assert_eq!((idle.migrated, idle.current, idle.failed.len()), (0, 3, 0));
}

#[tokio::test]
async fn a_changed_migration_is_refused() {
    let app = spawn_app().await;
    app.create_tenant("steady").await;
    let mut migrations = embedded_migrations();
    let first = migrations
        .first_mut()
        .expect("at least one tenant migration");
    first.checksum = Cow::Owned(vec![0; 48]);
    let summary = app
        .state
        .db
        .migrate_tenants(&migrations, 1, |_| {})
        .await
        .expect("run");
    assert_eq!(summary.failed.len(), 1);
    assert!(
        summary.failed[0].1.contains("different checksum"),
        "{}",
        summary.failed[0].1
    );
}

#[tokio::test]
async fn the_server_refuses_to_start_while_a_tenant_is_behind() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("lagging").await;
    let latest = embedded_migrations()
        .last()
        .expect("a tenant migration")
        .version;
    sqlx::query("delete from public.tenant_migrations where tenant_id = $1 and version = $2")
        .bind(tenant.id.0)
        .bind(latest)
        .execute(app.state.db.pool())
        .await
        .expect("forget a migration");

    let err = match Application::build(app.settings.clone()).await {
        Ok(_) => panic!("the server started with a tenant behind"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("1 tenant schema(s) are behind") && err.contains("run `canopy migrate`"),
        "{err}"
    );
}

#[tokio::test]
async fn tenants_can_be_provisioned_and_purged_concurrently() {
    let app = spawn_app().await;
    let creations = (0..8).map(|i| {
        let db = app.state.db.clone();
        async move {
            let slug = TenantSlug::parse(&format!("parallel-{i}")).expect("slug");
            db.create_tenant(&slug, "Parallel").await
        }
    });
    let tenants: Vec<_> = futures_util::future::join_all(creations)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every concurrent provisioning succeeds");
    for tenant in &tenants {
        app.state
            .db
            .delete_tenant(tenant.id, std::time::Duration::from_secs(1))
            .await
            .expect("delete");
    }
    let cutoff = chrono::Utc::now() + chrono::Duration::days(1);
    let purges = (0..4).map(|_| app.state.db.purge_deleted_tenants(cutoff));
    let purged: usize = futures_util::future::join_all(purges)
        .await
        .into_iter()
        .map(|r| r.expect("concurrent purge succeeds").len())
        .sum();
    assert_eq!(purged, 8, "each tenant purged exactly once");
    assert_eq!(leftovers(&app).await, (0, 0, 0));
}

#[tokio::test]
async fn existing_tenants_get_the_system_roles_and_their_owner_keeps_ownership() {
    let app = spawn_app().await;
    // A tenant provisioned before RBAC existed, with its owner flag and a member.
    let before_rbac: Vec<TenantMigration> = embedded_migrations()
        .into_iter()
        .filter(|m| m.version < 20261125000001)
        .collect();
    let slug = TenantSlug::parse("legacy").unwrap();
    let tenant = app
        .state
        .db
        .create_tenant_with(&slug, "Legacy", &before_rbac)
        .await
        .unwrap();
    let schema = tenant.id.schema_name();
    for (n, owner) in [(1, true), (2, false)] {
        sqlx::query(&format!(
            "insert into {schema}.users (id, email, email_key, name, password_hash, status, is_owner)
             values ($1, $2, $2, 'U', 'x', 'active', $3)"
        ))
        .bind(uuid::Uuid::from_u128(n))
        .bind(format!("u{n}@legacy.example"))
        .bind(owner)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    }

    app.state
        .db
        .migrate_tenants(&embedded_migrations(), 2, |_| {})
        .await
        .unwrap();

    let held: Vec<(uuid::Uuid, String)> = sqlx::query_as(&format!(
        "select ur.user_id, r.system_key from {schema}.user_roles ur
         join {schema}.roles r on r.id = ur.role_id order by ur.user_id"
    ))
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(
        held,
        [
            (uuid::Uuid::from_u128(1), "owner".to_owned()),
            (uuid::Uuid::from_u128(2), "member".to_owned())
        ]
    );
    let systems = count(
        &app,
        &format!("select count(*) from {schema}.roles where system_key is not null"),
    )
    .await;
    assert_eq!(systems, 4);
}

#[tokio::test]
async fn existing_email_keys_are_rekeyed_by_unicode_and_collisions_are_left_alone() {
    let app = spawn_app().await;
    let before: Vec<TenantMigration> = embedded_migrations()
        .into_iter()
        .filter(|m| m.version < 20261201000020)
        .collect();
    let slug = TenantSlug::parse("legacy-mail").unwrap();
    let tenant = app
        .state
        .db
        .create_tenant_with(&slug, "Legacy", &before)
        .await
        .unwrap();
    let schema = tenant.id.schema_name();
    // Keys as the old `lower()` (C collation) wrote them.
    for (n, email) in [
        (1, "ANA@BÜCHER.TEST"),
        (2, "Bob@Example.com"),
        (3, "X@ÄÄ.TEST"),
        (4, "x@ää.test"),
        (5, "ΕΛΛΗ@ΕΛΛΑΣ.TEST"),
    ] {
        sqlx::query(&format!(
            "insert into {schema}.users (id, email, email_key, name, password_hash, status)
             values ($1, $2, lower($2), 'U', 'x', 'active')"
        ))
        .bind(uuid::Uuid::from_u128(n))
        .bind(email)
        .execute(app.state.db.pool())
        .await
        .unwrap();
    }

    app.state
        .db
        .migrate_tenants(&embedded_migrations(), 2, |_| {})
        .await
        .unwrap();

    let keys: Vec<(String, String)> = sqlx::query_as(&format!(
        "select email, email_key from {schema}.users order by id"
    ))
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    let rust = |e: &str| identity::email::email_key(e);
    assert_eq!(
        keys,
        [
            ("ANA@BÜCHER.TEST".to_owned(), rust("ANA@BÜCHER.TEST")),
            ("Bob@Example.com".to_owned(), rust("Bob@Example.com")),
            // Its new key is the next row's: two accounts for one mailbox stay apart.
            ("X@ÄÄ.TEST".to_owned(), "x@ÄÄ.test".to_owned()),
            ("x@ää.test".to_owned(), rust("x@ää.test")),
            ("ΕΛΛΗ@ΕΛΛΑΣ.TEST".to_owned(), rust("ΕΛΛΗ@ΕΛΛΑΣ.TEST")),
        ]
    );
    assert_eq!(keys[0].1, "ana@bücher.test");
}
