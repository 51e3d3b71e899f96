//! Roles, their permissions and role assignments in a tenant's schema. Every function runs
//! on a connection the caller got from `TenantDb` (so inside the tenant's transaction).
//!
//! A tenant has at most [`MAX_ROLES`] roles, so hierarchy rules (no cycle, bounded depth)
//! are checked over the whole role list in memory, under [`lock_roles`], which serialises
//! every change to roles and assignments of the tenant.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tenancy::ConstraintExt;
use uuid::Uuid;

use crate::{Permission, PermissionSet, SystemRole, catalog::NOT_FOR_SELF_REGISTRATION};

/// Most roles (system ones included) a tenant may have.
pub const MAX_ROLES: usize = 104;

/// Longest chain from a role up to its root, the role included: a custom role may have a
/// parent, a grandparent, … up to this many roles in all.
pub const MAX_DEPTH: usize = 5;

/// Why a role change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// No role of this tenant has this id.
    #[error("no role has this id")]
    NotFound,
    /// The parent named does not exist in this tenant.
    #[error("the parent role does not exist")]
    ParentNotFound,
    /// Another role of the tenant has this name (case-insensitively).
    #[error("another role has this name")]
    NameTaken,
    /// System roles cannot be changed or deleted.
    #[error("system roles cannot be changed or deleted")]
    SystemRole,
    /// The parent would make the role its own ancestor.
    #[error("the parent would make the role its own ancestor")]
    Cycle,
    /// The chain of parents would be longer than [`MAX_DEPTH`].
    #[error("the chain of parents would be longer than {MAX_DEPTH} roles")]
    TooDeep,
    /// The tenant has [`MAX_ROLES`] roles already.
    #[error("the tenant already has {MAX_ROLES} roles")]
    TooMany,
    /// Users still hold the role.
    #[error("{0} users hold the role")]
    InUse(i64),
    /// Other roles inherit from the role.
    #[error("{0} roles inherit from it")]
    HasChildren(usize),
    /// Database failure.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// A role of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Id.
    pub id: Uuid,
    /// Name, unique in the tenant.
    pub name: String,
    /// What the role is for.
    pub description: String,
    /// Which system role it is, if it is one.
    pub system: Option<SystemRole>,
    /// The role it inherits from.
    pub parent_id: Option<Uuid>,
    /// Permissions granted to the role itself (for system roles, their built-in set).
    pub permissions: PermissionSet,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

const ROLE_SELECT: &str = "select r.id, r.name, r.description, r.system_key, r.parent_id,
            r.created_at, r.updated_at,
            coalesce(array_agg(p.permission) filter (where p.permission is not null), '{}') as permissions
     from roles r left join role_permissions p on p.role_id = r.id";

/// A row of [`ROLE_SELECT`], before the system role and the permissions are judged.
#[derive(sqlx::FromRow)]
struct RoleRow {
    id: Uuid,
    name: String,
    description: String,
    system_key: Option<String>,
    parent_id: Option<Uuid>,
    permissions: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<RoleRow> for Role {
    fn from(row: RoleRow) -> Self {
        let system = row
            .system_key
            .as_deref()
            .and_then(|key| key.parse::<SystemRole>().ok());
        // A name the catalog no longer has grants nothing.
        let (stored, _) = PermissionSet::from_names(row.permissions.iter().map(String::as_str));
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            system,
            parent_id: row.parent_id,
            permissions: system.map_or(stored, SystemRole::permissions),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Serialises role and assignment changes of the tenant until the transaction ends (reads
/// are not blocked). Take it before reading what a change is checked against.
pub async fn lock_roles(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("lock table roles in share row exclusive mode")
        .execute(conn)
        .await?;
    Ok(())
}

/// Every role of the tenant: system roles first, then custom ones by name.
pub async fn list_roles(conn: &mut PgConnection) -> Result<Vec<Role>, sqlx::Error> {
    let rows: Vec<RoleRow> = sqlx::query_as(&format!(
        "{ROLE_SELECT} group by r.id
         order by r.system_key is null, array_position(array['owner','admin','member','viewer'], r.system_key), r.name_key"
    ))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Role::from).collect())
}

/// The role with this id.
pub async fn role_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Role>, sqlx::Error> {
    let row: Option<RoleRow> =
        sqlx::query_as(&format!("{ROLE_SELECT} where r.id = $1 group by r.id"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(Role::from))
}

/// The id of a system role.
pub async fn system_role_id(
    conn: &mut PgConnection,
    role: SystemRole,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar("select id from roles where system_key = $1")
        .bind(role.as_str())
        .fetch_one(conn)
        .await
}

/// Everything a role allows: its own permissions and those of its ancestors, found in
/// `roles` (the tenant's whole role list). Stops at [`MAX_DEPTH`] and on a cycle.
pub fn effective_permissions(roles: &[Role], id: Uuid) -> PermissionSet {
    let by_id: HashMap<Uuid, &Role> = roles.iter().map(|r| (r.id, r)).collect();
    let mut set = PermissionSet::EMPTY;
    let mut next = Some(id);
    for _ in 0..MAX_DEPTH {
        let Some(role) = next.and_then(|id| by_id.get(&id)) else {
            break;
        };
        set = set.union(role.permissions);
        next = role.parent_id;
    }
    set
}

/// Whether a role may be what self-registration grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationRole {
    /// It may; this is what it allows (its ancestors' permissions included).
    Allowed(PermissionSet),
    /// No role of the tenant has this id.
    NotFound,
    /// It is `owner` or `admin`, or it allows some of
    /// [`crate::catalog::NOT_FOR_SELF_REGISTRATION`] (listed).
    TooPowerful(PermissionSet),
}

/// Judges role `id` of `roles` (the tenant's whole role list) as the role of
/// self-registered users: anything below admin, i.e. neither `owner` nor `admin`, and
/// allowing nothing of [`NOT_FOR_SELF_REGISTRATION`] through itself or its ancestors.
pub fn registration_role(roles: &[Role], id: Uuid) -> RegistrationRole {
    let Some(role) = roles.iter().find(|r| r.id == id) else {
        return RegistrationRole::NotFound;
    };
    let allows = effective_permissions(roles, id);
    let forbidden = allows.intersection(NOT_FOR_SELF_REGISTRATION);
    let privileged = matches!(role.system, Some(SystemRole::Owner | SystemRole::Admin));
    if privileged || !forbidden.is_empty() {
        return RegistrationRole::TooPowerful(forbidden);
    }
    RegistrationRole::Allowed(allows)
}

/// Checks that `id` (an existing role, or a new one when absent from `roles`) may have
/// `parent` as its parent: the parent exists, is not the role or one of its descendants,
/// and the longest chain through the role stays within [`MAX_DEPTH`].
pub fn check_parent(roles: &[Role], id: Uuid, parent: Uuid) -> Result<(), RoleError> {
    let by_id: HashMap<Uuid, &Role> = roles.iter().map(|r| (r.id, r)).collect();
    if !by_id.contains_key(&parent) {
        return Err(RoleError::ParentNotFound);
    }
    // Depth of the parent, walking up; meeting the role itself means a cycle.
    let mut above = 0;
    let mut cursor = Some(parent);
    while let Some(current) = cursor {
        if current == id {
            return Err(RoleError::Cycle);
        }
        above += 1;
        if above > MAX_DEPTH {
            return Err(RoleError::TooDeep);
        }
        cursor = by_id.get(&current).and_then(|r| r.parent_id);
    }
    // Height of the role's own subtree (1 for a leaf).
    fn height(roles: &[Role], id: Uuid, budget: usize) -> usize {
        if budget == 0 {
            return usize::MAX / 2;
        }
        1 + roles
            .iter()
            .filter(|r| r.parent_id == Some(id))
            .map(|r| height(roles, r.id, budget - 1))
            .max()
            .unwrap_or(0)
    }
    if above + height(roles, id, MAX_DEPTH + 1) > MAX_DEPTH {
        return Err(RoleError::TooDeep);
    }
    Ok(())
}

/// A custom role to create.
#[derive(Debug)]
pub struct NewRole<'a> {
    /// Name (trimmed by the caller).
    pub name: &'a str,
    /// Description.
    pub description: &'a str,
    /// Parent role.
    pub parent_id: Option<Uuid>,
    /// Permissions of its own.
    pub permissions: PermissionSet,
}

async fn replace_permissions(
    conn: &mut PgConnection,
    id: Uuid,
    permissions: PermissionSet,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from role_permissions where role_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("insert into role_permissions (role_id, permission) select $1, unnest($2::text[])")
        .bind(id)
        .bind(permissions.names())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Creates a custom role. Call under [`lock_roles`], after [`check_parent`].
pub async fn create_role(conn: &mut PgConnection, new: NewRole<'_>) -> Result<Role, RoleError> {
    let count: i64 = sqlx::query_scalar("select count(*) from roles")
        .fetch_one(&mut *conn)
        .await?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_ROLES {
        return Err(RoleError::TooMany);
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into roles (id, name, name_key, description, parent_id)
         values ($1, $2, lower($2), $3, $4)",
    )
    .bind(id)
    .bind(new.name)
    .bind(new.description)
    .bind(new.parent_id)
    .execute(&mut *conn)
    .await
    .on_constraint("roles_name_key_key", || RoleError::NameTaken)?;
    replace_permissions(conn, id, new.permissions).await?;
    role_by_id(conn, id).await?.ok_or(RoleError::NotFound)
}

/// Changes to a custom role; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct RoleChanges<'a> {
    /// New name.
    pub name: Option<&'a str>,
    /// New description.
    pub description: Option<&'a str>,
    /// New parent (`Some(None)` removes it).
    pub parent_id: Option<Option<Uuid>>,
    /// New permissions of its own (replacing the old ones).
    pub permissions: Option<PermissionSet>,
}

/// Changes a custom role. Call under [`lock_roles`], after [`check_parent`].
pub async fn update_role(
    conn: &mut PgConnection,
    id: Uuid,
    changes: RoleChanges<'_>,
) -> Result<Role, RoleError> {
    let before = role_by_id(conn, id).await?.ok_or(RoleError::NotFound)?;
    if before.system.is_some() {
        return Err(RoleError::SystemRole);
    }
    let parent = changes.parent_id.unwrap_or(before.parent_id);
    sqlx::query(
        "update roles set name = $2, name_key = lower($2), description = $3, parent_id = $4,
                updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(changes.name.unwrap_or(&before.name))
    .bind(changes.description.unwrap_or(&before.description))
    .bind(parent)
    .execute(&mut *conn)
    .await
    .on_constraint("roles_name_key_key", || RoleError::NameTaken)?;
    if let Some(permissions) = changes.permissions {
        replace_permissions(conn, id, permissions).await?;
    }
    role_by_id(conn, id).await?.ok_or(RoleError::NotFound)
}

/// Deletes a custom role nobody holds and no role inherits from. Call under [`lock_roles`].
pub async fn delete_role(conn: &mut PgConnection, id: Uuid) -> Result<Role, RoleError> {
    let role = role_by_id(conn, id).await?.ok_or(RoleError::NotFound)?;
    if role.system.is_some() {
        return Err(RoleError::SystemRole);
    }
    let holders: i64 = sqlx::query_scalar("select count(*) from user_roles where role_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if holders > 0 {
        return Err(RoleError::InUse(holders));
    }
    let children: i64 = sqlx::query_scalar("select count(*) from roles where parent_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if children > 0 {
        return Err(RoleError::HasChildren(
            usize::try_from(children).unwrap_or(usize::MAX),
        ));
    }
    sqlx::query("delete from roles where id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(role)
}

/// Everything a user may do: the permissions of every role they hold and of those roles'
/// ancestors. One query; the hot path of permission checks on a cache miss.
pub async fn user_permissions(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<PermissionSet, sqlx::Error> {
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(&format!(
        "with recursive chain (id, parent_id, system_key, depth) as (
             select r.id, r.parent_id, r.system_key, 1
             from user_roles ur join roles r on r.id = ur.role_id
             where ur.user_id = $1
           union all
             select p.id, p.parent_id, p.system_key, c.depth + 1
             from chain c join roles p on p.id = c.parent_id
             where c.depth < {MAX_DEPTH}
         )
         select distinct c.system_key, rp.permission
         from chain c left join role_permissions rp on rp.role_id = c.id"
    ))
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    let mut set = PermissionSet::EMPTY;
    for (system_key, permission) in rows {
        if let Some(system) = system_key
            .as_deref()
            .and_then(|key| key.parse::<SystemRole>().ok())
        {
            set = set.union(system.permissions());
        }
        if let Some(p) = permission.and_then(|p| p.parse::<Permission>().ok()) {
            set.insert(p);
        }
    }
    Ok(set)
}

/// The roles (id, name) each of these users holds, by name.
pub async fn roles_of_users(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<(Uuid, String)>>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "select ur.user_id, r.id, r.name from user_roles ur join roles r on r.id = ur.role_id
         where ur.user_id = any($1) order by r.name_key",
    )
    .bind(user_ids)
    .fetch_all(conn)
    .await?;
    let mut map: HashMap<Uuid, Vec<(Uuid, String)>> = HashMap::new();
    for (user_id, id, name) in rows {
        map.entry(user_id).or_default().push((id, name));
    }
    Ok(map)
}

/// Makes `role_ids` exactly the roles `user_id` holds. Call under [`lock_roles`]; every id
/// must name an existing role (the foreign key refuses others).
pub async fn set_user_roles(
    conn: &mut PgConnection,
    user_id: Uuid,
    role_ids: &[Uuid],
    granted_by: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from user_roles where user_id = $1 and not (role_id = any($2))")
        .bind(user_id)
        .bind(role_ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into user_roles (user_id, role_id, granted_by)
         select $1, unnest($2::uuid[]), $3
         on conflict do nothing",
    )
    .bind(user_id)
    .bind(role_ids)
    .bind(granted_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives a user a system role (sign-up's owner, a self-registered user's default role).
pub async fn grant_system_role(
    conn: &mut PgConnection,
    user_id: Uuid,
    role: SystemRole,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into user_roles (user_id, role_id)
         select $1, id from roles where system_key = $2
         on conflict do nothing",
    )
    .bind(user_id)
    .bind(role.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether `user_id` holds `role`.
pub async fn holds_system_role(
    conn: &mut PgConnection,
    user_id: Uuid,
    role: SystemRole,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from user_roles ur join roles r on r.id = ur.role_id
                        where ur.user_id = $1 and r.system_key = $2)",
    )
    .bind(user_id)
    .bind(role.as_str())
    .fetch_one(conn)
    .await
}

/// How many active users other than `except` hold the owner role. Call under
/// [`lock_roles`] before taking the owner role away from `except` or blocking them.
pub async fn other_active_owners(
    conn: &mut PgConnection,
    except: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from user_roles ur
         join roles r on r.id = ur.role_id and r.system_key = 'owner'
         join users u on u.id = ur.user_id and u.status = 'active'
         where ur.user_id <> $1",
    )
    .bind(except)
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(id: u128, parent: Option<u128>, permissions: &[Permission]) -> Role {
        Role {
            id: Uuid::from_u128(id),
            name: id.to_string(),
            description: String::new(),
            system: None,
            parent_id: parent.map(Uuid::from_u128),
            permissions: PermissionSet::of(permissions),
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn effective_permissions_inherit_up_the_chain() {
        use Permission::*;
        let roles = [
            role(1, None, &[ProductsRead]),
            role(2, Some(1), &[ProductsWrite]),
            role(3, Some(2), &[FilesRead]),
        ];
        assert_eq!(
            effective_permissions(&roles, Uuid::from_u128(3)),
            PermissionSet::of(&[ProductsRead, ProductsWrite, FilesRead])
        );
        assert_eq!(
            effective_permissions(&roles, Uuid::from_u128(1)),
            PermissionSet::of(&[ProductsRead])
        );
    }

    #[test]
    fn registration_roles_stay_below_admin_through_their_ancestors() {
        use Permission::*;
        let mut admin = role(1, None, &[]);
        admin.system = Some(SystemRole::Admin);
        admin.permissions = SystemRole::Admin.permissions();
        let roles = [
            admin,
            role(2, None, &[ProductsRead, ProductsWrite]),
            role(3, None, &[UsersManage]),
            role(4, Some(3), &[ProductsRead]),
        ];
        let id = Uuid::from_u128;
        assert!(matches!(
            registration_role(&roles, id(1)),
            RegistrationRole::TooPowerful(_)
        ));
        assert_eq!(
            registration_role(&roles, id(2)),
            RegistrationRole::Allowed(PermissionSet::of(&[ProductsRead, ProductsWrite]))
        );
        assert_eq!(
            registration_role(&roles, id(4)),
            RegistrationRole::TooPowerful(PermissionSet::of(&[UsersManage]))
        );
        assert_eq!(registration_role(&roles, id(9)), RegistrationRole::NotFound);
    }

    #[test]
    fn parents_refuse_cycles_and_depth() {
        let id = Uuid::from_u128;
        // 1 <- 2 <- 3 <- 4 <- 5 (5 deep), 6 alone, 7 <- 8.
        let roles = [
            role(1, None, &[]),
            role(2, Some(1), &[]),
            role(3, Some(2), &[]),
            role(4, Some(3), &[]),
            role(5, Some(4), &[]),
            role(6, None, &[]),
            role(7, None, &[]),
            role(8, Some(7), &[]),
        ];
        assert!(matches!(
            check_parent(&roles, id(1), id(1)),
            Err(RoleError::Cycle)
        ));
        assert!(matches!(
            check_parent(&roles, id(1), id(3)),
            Err(RoleError::Cycle)
        ));
        assert!(matches!(
            check_parent(&roles, id(6), id(5)),
            Err(RoleError::TooDeep)
        ));
        // A new role under 4 is the fifth: fine; under 5 it would be the sixth.
        assert!(check_parent(&roles, id(99), id(4)).is_ok());
        assert!(matches!(
            check_parent(&roles, id(99), id(5)),
            Err(RoleError::TooDeep)
        ));
        // Moving 7 (with its child 8) under 3 makes 5 levels: fine; under 4, six.
        assert!(check_parent(&roles, id(7), id(3)).is_ok());
        assert!(matches!(
            check_parent(&roles, id(7), id(4)),
            Err(RoleError::TooDeep)
        ));
        assert!(matches!(
            check_parent(&roles, id(6), id(42)),
            Err(RoleError::ParentNotFound)
        ));
    }
}
