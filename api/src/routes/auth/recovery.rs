//! Password recovery: a reset link by email, and the reset it allows.

use identity::{
    OpaqueToken, lifecycle,
    link_emails::PasswordResetRequested,
    store::{self, TokenPurpose},
};
use poem::{Request, web::Data};
use poem_openapi::OpenApi;
use serde_json::json;

use crate::{
    AppState,
    error::ApiResult,
    limits::{self},
    payload::JsonBody,
    routes::{ApiTag, audit, auth::*},
    tenant::CurrentTenant,
};

/// Recovery endpoints.
pub struct RecoveryApi;

#[OpenApi(tag = "ApiTag::Auth")]
impl RecoveryApi {
    /// Ask for a password reset link.
    ///
    /// The answer is the same whether or not an account has this address.
    #[oai(
        path = "/v1/auth/forgot-password",
        method = "post",
        operation_id = "forgot_password"
    )]
    async fn forgot_password(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<EmailRequest>,
    ) -> ApiResult<AcceptedResponse> {
        request_link(
            &state,
            request,
            &tenant,
            &body.0.email,
            |email| PasswordResetRequested { email },
            "If an account has this address, a password reset link is on its way.",
        )
        .await
    }

    /// Set a new password with a reset link.
    ///
    /// The link works once. Every session of the user ends, and a security notice is sent.
    /// A user whose account had a security issue is active again.
    #[oai(
        path = "/v1/auth/reset-password",
        method = "post",
        operation_id = "reset_password"
    )]
    async fn reset_password(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<ResetPasswordRequest>,
    ) -> ApiResult<NoContent> {
        let client = recovery_throttle(&state, request, &tenant).await?;
        let token = OpaqueToken::parse(&body.0.token).ok_or_else(link_invalid)?;
        let hash = state.hasher.hash(&body.0.password).await?;
        let tenant_id = tenant.0.id;
        let mut tx = tenant.begin(&state).await?;
        let Some(user) =
            store::consume_user_token(&mut tx, &token, TokenPurpose::ResetPassword).await?
        else {
            tx.rollback().await?;
            return Err(link_invalid());
        };
        store::set_password(&mut tx, user, &hash, true).await?;
        // Opening the link proves the mailbox is theirs: a pending user becomes active and
        // takes a seat, refused (and nothing done) when the plan has none left.
        let activated = store::mark_email_verified(&mut tx, user).await?;
        limits::ensure_seats(&state, &mut tx, &tenant.0, activated).await?;
        // The way back from a security issue (the user kept their seat).
        let recovered = lifecycle::clear_security_issue(&mut tx, user).await?;
        let ended = store::revoke_user_sessions(&mut tx, user, None, "password_reset").await?;
        audit::record(
            &mut tx,
            "password.reset",
            Some(user),
            Some(user),
            None,
            &client,
            json!({ "sessions_ended": ended.len(), "security_issue_cleared": recovered }),
        )
        .await?;
        if let Some(user) = store::user_by_id(&mut tx, user).await? {
            send_notice(
                &mut tx,
                &user,
                "Your password was reset, and every device was logged out.",
            )
            .await?;
        }
        tx.commit().await?;
        state.revocations.revoke_sessions(tenant_id, &ended).await;
        if recovered {
            state.revocations.unblock_user(tenant_id, user).await;
        }
        Ok(NoContent::Done)
    }
}
