//! The user lifecycle, under the Users tag: users created by an administrator and the
//! security-issue status (`members.rs`), changing one's email address (`email_change.rs`),
//! deletion by an administrator or oneself (`deletion.rs`) and the export of one's own data
//! (`export.rs`): one `#[OpenApi]` struct per flow, combined in [`LifecycleApi`]. The
//! operations on paths `UsersApi` already has (`POST /v1/users`, `DELETE /v1/users/{id}`,
//! `DELETE /v1/me`) are declared there and handled here: poem-openapi documents a path
//! from one `#[OpenApi]` impl only (a second one's operations on it vanish from the
//! document). The
//! domain side (SQL, the confirmation email job, erasure) is [`identity::lifecycle`].
//!
//! Acting on another user needs `users:manage` and every permission they hold (the
//! outrank rule of [`super`] (`routes::users`)); the tenant's last active owner can be neither
//! flagged nor deleted.

pub mod deletion;
pub mod email_change;
pub mod export;
pub mod members;

use identity::{Verified, store};
use serde_json::json;

use crate::{
    AppState,
    auth::Principal,
    error::{ApiError, ApiResult, FieldCode, FieldError},
    routes::{audit, auth::lockout_policy},
};

/// The lifecycle endpoints.
pub type LifecycleApi = (
    members::MembersApi,
    email_change::EmailChangeApi,
    export::ExportApi,
);

/// The value of [`LifecycleApi`].
pub const LIFECYCLE_API: LifecycleApi = (
    members::MembersApi,
    email_change::EmailChangeApi,
    export::ExportApi,
);

/// Checks the signed-in user's password for a sensitive change of their own account. A
/// wrong one counts toward the lockout, as for changing the password, is audited as
/// `password.confirm_failed` (with `purpose`), and is a 422 on `password`.
async fn confirm_password(
    state: &AppState,
    me: &Principal,
    client: &identity::ClientInfo,
    password: &str,
    purpose: &str,
) -> ApiResult<()> {
    let mut tx = me.begin(state).await?;
    let stored = store::password_hash(&mut tx, me.user_id).await?;
    tx.commit().await?;
    // The connection is back in the pool while the hash runs.
    let verified = state.hasher.verify(password, stored.as_deref()).await?;
    if verified != Verified::No {
        return Ok(());
    }
    let mut tx = me.begin(state).await?;
    store::record_login_failure(&mut tx, me.user_id, lockout_policy(&state.settings.auth)).await?;
    audit::record(
        &mut tx,
        "password.confirm_failed",
        Some(me.user_id),
        Some(me.user_id),
        Some(me.session_id),
        client,
        json!({ "purpose": purpose }),
    )
    .await?;
    tx.commit().await?;
    Err(ApiError::validation(vec![FieldError::new(
        "password",
        FieldCode::Incorrect,
        "is not the current password",
    )]))
}
