//! Changing the signed-in user's password.

use identity::{
    Verified,
    store::{self},
};
use poem::{Request, web::Data};
use poem_openapi::OpenApi;
use serde_json::json;

use crate::{
    AppState,
    auth::{UserAuth, client_info},
    error::{ApiError, ApiResult, FieldCode, FieldError},
    payload::JsonBody,
    routes::{ApiTag, audit, auth::*},
};

/// Password endpoints.
pub struct PasswordApi;

#[OpenApi(tag = "ApiTag::Auth")]
impl PasswordApi {
    /// Change the current user's password.
    ///
    /// Every other session of the user ends; this one stays. A security notice is sent.
    #[oai(
        path = "/v1/auth/change-password",
        method = "post",
        operation_id = "change_password"
    )]
    async fn change_password(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<ChangePasswordRequest>,
    ) -> ApiResult<NoContent> {
        let me = auth.0;
        let client = client_info(request);
        let tenant_id = me.tenant.id;
        let mut tx = me.begin(&state).await?;
        let stored = store::password_hash(&mut tx, me.user_id).await?;
        tx.commit().await?;
        let verified = state
            .hasher
            .verify(&body.0.current_password, stored.as_deref())
            .await?;
        if verified == Verified::No {
            let mut tx = me.begin(&state).await?;
            let policy = lockout_policy(&state.settings.auth);
            store::record_login_failure(&mut tx, me.user_id, policy).await?;
            audit::record(
                &mut tx,
                "password.change_failed",
                Some(me.user_id),
                Some(me.user_id),
                Some(me.session_id),
                &client,
                json!({}),
            )
            .await?;
            tx.commit().await?;
            return Err(ApiError::validation(vec![FieldError::new(
                "current_password",
                FieldCode::Incorrect,
                "is not the current password",
            )]));
        }
        let hash = state.hasher.hash(&body.0.new_password).await?;
        let mut tx = me.begin(&state).await?;
        store::set_password(&mut tx, me.user_id, &hash, false).await?;
        let ended = store::revoke_user_sessions(
            &mut tx,
            me.user_id,
            Some(me.session_id),
            "password_changed",
        )
        .await?;
        audit::record(
            &mut tx,
            "password.changed",
            Some(me.user_id),
            Some(me.user_id),
            Some(me.session_id),
            &client,
            json!({ "sessions_ended": ended.len() }),
        )
        .await?;
        if let Some(user) = store::user_by_id(&mut tx, me.user_id).await? {
            send_notice(
                &mut tx,
                &user,
                "Your password was changed, and your other devices were logged out.",
            )
            .await?;
        }
        tx.commit().await?;
        state.revocations.revoke_sessions(tenant_id, &ended).await;
        Ok(NoContent::Done)
    }
}
