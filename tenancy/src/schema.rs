//! The database objects of one tenant schema outside its tables: the role and the schema
//! named `t_<id>` (derived from the id, never from input), their grants, and dropping them.
//! Provisioning from scratch, building a spare, purging a tenant and discarding a spare all
//! go through here, so a spare's schema is made exactly as a tenant's is.

use sqlx::{Executor, PgConnection};

use crate::{TenancyError, TenantId};

/// Creates the role and schema of `id` with their grants, inside the caller's transaction.
///
/// The role can use its own schema and what the `canopy_tenant` group holds (the shared
/// schema, `shared.enqueue_job`), nothing else; the login role owns the tables (so the
/// tenant role cannot alter them) and is a member of the tenant role (so it can `set role`).
pub(crate) async fn create_tenant_objects(
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<(), TenancyError> {
    let ident = id.quoted_ident();
    let setup = format!(
        "create role {ident} nologin;
         grant {ident} to current_user;
         create schema {ident};
         grant usage on schema {ident} to {ident};
         alter default privileges in schema {ident} grant select, insert, update, delete on tables to {ident};
         alter default privileges in schema {ident} grant usage, select, update on sequences to {ident};
         grant canopy_tenant to {ident};"
    );
    conn.execute(sqlx::raw_sql(&setup)).await?;
    Ok(())
}

/// Drops the schema and role of `id`, inside the caller's transaction.
pub(crate) async fn drop_tenant_objects(
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<(), TenancyError> {
    let ident = id.quoted_ident();
    // `drop owned` revokes what the role was granted elsewhere (the shared schema), so the
    // role itself can go.
    let sql = format!(
        "set local lock_timeout = '10s';
         drop schema if exists {ident} cascade;
         drop owned by {ident};
         drop role if exists {ident};"
    );
    conn.execute(sqlx::raw_sql(&sql)).await?;
    Ok(())
}
