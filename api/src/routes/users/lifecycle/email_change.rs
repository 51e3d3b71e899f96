//! Changing one's email address: `POST /v1/me/email` asks (with the password) and sends a
//! confirmation link to the new address and a notice to the old; `POST /v1/me/email/confirm`
//! makes the change. The answer to the request is the same whether the new address is free
//! or another user's (no enumeration); only a free one gets a link.

use identity::{
    Email, OpaqueToken, StoreError,
    lifecycle::{self, EmailChangeConfirmation},
    store,
};
use jobs::Job;
use poem::{Request, web::Data};
use poem_openapi::{Object, OpenApi, payload::Json};
use serde::Deserialize;
use serde_json::json;

use crate::{
    AppState,
    auth::{UserAuth, client_info},
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    payload::{EmailText, JsonBody, Validate, all_valid},
    routes::{
        ApiTag, audit,
        auth::{Accepted, AcceptedResponse, send_notice},
        checks::{check_email, check_present_password},
        users::{UserView, current_user, user_view},
    },
};

use super::confirm_password;

/// Email change endpoints.
pub struct EmailChangeApi;

/// A change of address to ask for.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ChangeEmailRequest {
    /// The new address (surrounding whitespace is ignored; at most 254 bytes).
    pub new_email: EmailText,
    /// The password now: 1 to 1024 bytes of UTF-8.
    #[oai(validator(min_length = 1))]
    pub password: String,
}

impl Validate for ChangeEmailRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_email(&mut errors, "new_email", &self.new_email);
        check_present_password(&mut errors, "password", &self.password);
        all_valid(errors)
    }
}

/// The link that confirms a change of address.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ConfirmEmailRequest {
    /// The `token` query parameter of the link sent to the new address.
    pub token: String,
}

impl Validate for ConfirmEmailRequest {}

#[OpenApi(tag = "ApiTag::Users")]
impl EmailChangeApi {
    /// Ask to change one's email address.
    ///
    /// Needs the current password (a wrong one is a 422 on `password` and counts toward
    /// the lockout, as for changing the password). The answer is the same whether or not
    /// the new address can be used: when no other user of the tenant has it, a link that
    /// confirms the change (single use, valid for 24 hours) is sent to it; either way a security notice goes to the current address.
    /// Nothing changes until `POST /v1/me/email/confirm`; asking again voids earlier links.
    #[oai(
        path = "/v1/me/email",
        method = "post",
        operation_id = "change_my_email"
    )]
    async fn change_email(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<ChangeEmailRequest>,
    ) -> ApiResult<AcceptedResponse> {
        let me = auth.0;
        let client = client_info(request);
        let body = body.0;
        confirm_password(&state, &me, &client, &body.password, "email_change").await?;
        let new = Email::new(body.new_email.trim());
        let mut tx = me.begin(&state).await?;
        let user = current_user(&mut tx, &me).await?;
        if lifecycle::request_email_change(&mut tx, me.user_id, &new).await? {
            let job = EmailChangeConfirmation {
                user_id: me.user_id,
            };
            jobs::enqueue(&mut tx, job.to_job()?).await?;
        }
        send_notice(
            &mut tx,
            &user,
            "A change of your email address was asked for. If it was not you, change your password now.",
        )
        .await?;
        // No address in the audit data, and nothing that says whether it was free.
        audit::record(
            &mut tx,
            "user.email_change_requested",
            Some(me.user_id),
            Some(me.user_id),
            Some(me.session_id),
            &client,
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(AcceptedResponse::Accepted(Json(Accepted {
            message: "If the new address can be used, a confirmation link is on its way to it."
                .to_owned(),
        })))
    }

    /// Confirm a change of email address.
    ///
    /// With the token of the link sent to the new address, signed in as the user who asked:
    /// the new address becomes the account's (verified) address, every other session of
    /// the user ends (this one stays), and a notice goes to the old address. The link works
    /// once; an unknown, used, replaced or expired one, or another user's, is 400
    /// `email_change_invalid`. An address another user took meanwhile is 409 `email_taken`.
    /// Audited as `user.email_changed` (without the addresses).
    #[oai(
        path = "/v1/me/email/confirm",
        method = "post",
        operation_id = "confirm_my_email_change"
    )]
    async fn confirm_email_change(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<ConfirmEmailRequest>,
    ) -> ApiResult<Json<UserView>> {
        let me = auth.0;
        let client = client_info(request);
        let token = OpaqueToken::parse(&body.0.token).ok_or_else(change_invalid)?;
        let mut tx = me.begin(&state).await?;
        let changed = match lifecycle::confirm_email_change(&mut tx, &token, me.user_id).await {
            Ok(Some(changed)) => changed,
            Ok(None) => {
                tx.rollback().await?;
                return Err(change_invalid());
            }
            Err(StoreError::EmailTaken) => {
                tx.rollback().await?;
                return Err(ApiError::new(
                    ErrorCode::EmailTaken,
                    "Another user of this tenant has had this address since the change was asked for.",
                ));
            }
            Err(other) => return Err(other.into()),
        };
        let ended =
            store::revoke_user_sessions(&mut tx, me.user_id, Some(me.session_id), "email_changed")
                .await?;
        let user = current_user(&mut tx, &me).await?;
        let mut old = user.clone();
        old.email = changed.old_email;
        send_notice(
            &mut tx,
            &old,
            "Your account's email address was changed, and your other devices were logged out. If it was not you, contact your administrator.",
        )
        .await?;
        audit::record(
            &mut tx,
            "user.email_changed",
            Some(me.user_id),
            Some(me.user_id),
            Some(me.session_id),
            &client,
            json!({ "sessions_ended": ended.len() }),
        )
        .await?;
        let view = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        state
            .revocations
            .revoke_sessions(me.tenant.id, &ended)
            .await;
        Ok(Json(view))
    }
}

fn change_invalid() -> ApiError {
    ApiError::new(
        ErrorCode::EmailChangeInvalid,
        "This email change link is unknown, already used, replaced, expired or another user's; ask for a new change.",
    )
}
