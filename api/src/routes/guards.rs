//! Guards of changes to roles and role assignments, shared by the roles, users,
//! invitations and tenant endpoints: nobody grants what they do not hold, and changes are
//! judged under the tenant's roles lock against the caller's permissions as they stand.

use rbac::{Permission, PermissionSet, Role, store};
use tenancy::TenantTx;
use uuid::Uuid;

use crate::{
    auth::{Principal, missing},
    error::{ApiError, ErrorCode, FieldCode, FieldError},
};

/// Why a role is refused to someone lacking what it grants.
pub(crate) const GRANTS_MORE: &str = "This role grants permissions you do not hold";

/// A 403 `forbidden` (starting with `refusal`, listing the permissions in `permissions`)
/// unless `actor` holds every permission of `wanted`.
pub(crate) fn ensure_holds(
    actor: PermissionSet,
    wanted: PermissionSet,
    refusal: &str,
) -> Result<(), ApiError> {
    let lacking = wanted.difference(actor);
    if lacking.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("{refusal}: {}.", lacking.names().join(", ")),
    )
    .with_extension("permissions", lacking.names().into()))
}

/// The requested role ids, deduplicated; a 422 naming each one the tenant does not have.
pub(crate) fn known_roles(all_roles: &[Role], requested: &[Uuid]) -> Result<Vec<Uuid>, ApiError> {
    let unknown: Vec<FieldError> = requested
        .iter()
        .enumerate()
        .filter(|(_, id)| !all_roles.iter().any(|r| r.id == **id))
        .map(|(i, id)| {
            FieldError::new(
                format!("role_ids[{i}]"),
                FieldCode::NotFound,
                format!("no role of this tenant has id {id}"),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::validation(unknown));
    }
    let mut wanted = requested.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    Ok(wanted)
}

/// Everything holding all of `role_ids` allows.
pub(crate) fn allowed_by(all_roles: &[Role], role_ids: &[Uuid]) -> PermissionSet {
    role_ids
        .iter()
        .map(|id| store::effective_permissions(all_roles, *id))
        .fold(PermissionSet::EMPTY, PermissionSet::union)
}

/// Locks the tenant's roles and returns them with the caller's permissions as they stand
/// now (not as cached when the request started; for an API key, bounded by the key), which
/// must still include `required` (the endpoint's permission: a role taken away meanwhile
/// counts).
pub(crate) async fn lock_for_change(
    tx: &mut TenantTx,
    actor: &Principal,
    required: Permission,
) -> Result<(Vec<Role>, PermissionSet), ApiError> {
    store::lock_roles(tx).await.map_err(ApiError::internal)?;
    let roles = store::list_roles(tx).await.map_err(ApiError::internal)?;
    let held = store::user_permissions(tx, actor.user_id)
        .await
        .map_err(ApiError::internal)?;
    // What an API key acts with is bounded by the key too.
    let held = crate::auth::authz::bounded_by_key(actor, held);
    if !held.contains(required) {
        return Err(missing(required));
    }
    Ok((roles, held))
}
