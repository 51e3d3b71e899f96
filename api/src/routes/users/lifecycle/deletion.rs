//! Deleting a user: by an administrator (`DELETE /v1/users/{id}`) or oneself
//! (`DELETE /v1/me`, with the password). Both erase the person's personal data in one
//! tenant transaction ([`identity::lifecycle::erase_personal_data`]), keep the row as a
//! tombstone the audit log still points at, free the seat, and end every token at once
//! (announced to every instance after commit). The last active owner cannot be deleted.

use identity::{UserStatus, lifecycle, store};
use poem::Request;
use poem_openapi::{ApiResponse, Object};
use rbac::{Permission, store as roles};
use serde::Deserialize;
use serde_json::json;
use tenancy::TenantTx;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, Principal, UserAuth, client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    payload::{Validate, all_valid},
    routes::{
        audit,
        checks::check_present_password,
        guards::lock_for_change,
        users::{ensure_not_last_owner, ensure_outranks, user_not_found},
    },
};

use super::confirm_password;

/// Answer to a deletion.
#[derive(ApiResponse)]
pub enum UserDeleted {
    // Not `routes::auth::NoContent`: `auth` uses `users`, and `users` declares these routes.
    /// Deleted: the personal data is erased and every token of the user is dead.
    #[oai(status = 204)]
    Deleted,
}

/// Deleting one's own account.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct DeleteMeRequest {
    /// The password now: 1 to 1024 bytes of UTF-8.
    #[oai(validator(min_length = 1))]
    pub password: String,
}

impl Validate for DeleteMeRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_present_password(&mut errors, "password", &self.password);
        all_valid(errors)
    }
}

// The handlers of `DELETE /v1/users/{id}` and `DELETE /v1/me`, declared in `UsersApi`,
// which owns both paths (poem-openapi documents a path from one `#[OpenApi]` impl only).
/// `DELETE /v1/users/{id}`: an administrator deletes `target`.
pub(crate) async fn delete_user(
    state: &AppState,
    request: &Request,
    auth: Authorized<perm::UsersManage>,
    target: Uuid,
) -> ApiResult<UserDeleted> {
    let me = auth.principal;
    let client = client_info(request);
    if target == me.user_id {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "To delete your own account use `DELETE /v1/me`.",
        ));
    }
    let mut tx = me.begin(state).await?;
    let (_, held) = lock_for_change(&mut tx, &me, Permission::UsersManage).await?;
    store::user_by_id(&mut tx, target)
        .await?
        .filter(|u| u.status != UserStatus::Deleted)
        .ok_or_else(user_not_found)?;
    ensure_outranks(&mut tx, held, target).await?;
    erase(state, tx, &me, target, &client).await
}

/// `DELETE /v1/me`: the signed-in user deletes themselves, with their password.
pub(crate) async fn delete_me(
    state: &AppState,
    request: &Request,
    auth: UserAuth,
    body: DeleteMeRequest,
) -> ApiResult<UserDeleted> {
    let me = auth.0;
    let client = client_info(request);
    confirm_password(state, &me, &client, &body.password, "delete_account").await?;
    let mut tx = me.begin(state).await?;
    roles::lock_roles(&mut tx)
        .await
        .map_err(ApiError::internal)?;
    let user = me.user_id;
    erase(state, tx, &me, user, &client).await
}

/// The deletion both paths share, under the roles lock: the last-owner check, the
/// erasure, the audit event, the commit, and the announcements.
async fn erase(
    state: &AppState,
    mut tx: TenantTx,
    me: &Principal,
    target: Uuid,
    client: &identity::ClientInfo,
) -> ApiResult<UserDeleted> {
    ensure_not_last_owner(&mut tx, target).await?;
    let erased = lifecycle::erase_personal_data(&mut tx, target)
        .await?
        .ok_or_else(user_not_found)?;
    audit::record(
        &mut tx,
        "user.deleted",
        Some(me.user_id),
        Some(target),
        Some(me.session_id),
        client,
        json!({ "by_self": me.user_id == target, "sessions_ended": erased.sessions.len() }),
    )
    .await?;
    tx.commit().await?;
    // The database has it; now every instance's next check sees it too.
    state
        .revocations
        .block_user(me.tenant.id, target, &erased.sessions)
        .await;
    state.permissions.invalidate(me.tenant.id).await;
    Ok(UserDeleted::Deleted)
}
