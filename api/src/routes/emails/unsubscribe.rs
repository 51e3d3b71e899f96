//! One-click unsubscribe (RFC 8058): `POST /v1/email/unsubscribe?token=…`, the link of a
//! non-essential message's `List-Unsubscribe` header. Mail clients post it themselves,
//! without credentials: the signed token is the authority, and it names the tenant and the
//! user (`email::unsubscribe`). The tenant comes from the verified token, never from the
//! request's host or headers.

use email::unsubscribe::{self, TOKEN_MAX};
use poem::web::Data;
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi, param::Query, payload::Form};
use serde::Deserialize;

use crate::{
    AppState,
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{JsonBody, Validate},
    routes::ApiTag,
};

/// Unsubscribe.
pub struct UnsubscribeApi;

/// The one-click form body (RFC 8058), `List-Unsubscribe=One-Click`.
#[derive(Debug, Object, Deserialize)]
pub struct OneClick {
    /// `One-Click`.
    #[oai(rename = "List-Unsubscribe", validator(max_length = 32))]
    #[serde(rename = "List-Unsubscribe")]
    pub list_unsubscribe: String,
}

/// The token as JSON, for clients that post it themselves.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeRequest {
    /// The `token` of the unsubscribe link (at most 256 characters).
    #[oai(validator(max_length = 256))]
    pub token: String,
}

impl Validate for UnsubscribeRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if self.token.len() > TOKEN_MAX {
            return Err(vec![FieldError::new(
                "token",
                FieldCode::TooLong,
                "must be at most 256 characters",
            )]);
        }
        Ok(())
    }
}

/// Either body: the form mail clients send, or JSON.
#[derive(Debug, ApiRequest)]
pub enum UnsubscribeBody {
    /// RFC 8058's one-click post; the token is the link's `token` query parameter.
    Form(Form<OneClick>),
    /// `{token}` (a `token` query parameter, when also given, must be the same).
    Json(JsonBody<UnsubscribeRequest>),
}

/// Unsubscribed.
#[derive(ApiResponse)]
pub enum Unsubscribed {
    /// The preference is recorded (again, if it was already).
    #[oai(status = 204)]
    Done,
}

fn token_invalid() -> ApiError {
    ApiError::new(
        ErrorCode::UnsubscribeTokenInvalid,
        "The unsubscribe token is missing, malformed or not signed by this service.",
    )
}

#[OpenApi(tag = "ApiTag::Email")]
impl UnsubscribeApi {
    /// Stop non-essential email (one click).
    ///
    /// The link of a message's `List-Unsubscribe` header, posted by the mail client (RFC
    /// 8058) with the form body `List-Unsubscribe=One-Click`, or with `{token}` as JSON. No
    /// credentials: the signed token names the tenant, the user and the kind of mail they
    /// decline. Security, verification, reset and invitation emails still arrive. Doing it
    /// again changes nothing.
    #[oai(
        path = "/v1/email/unsubscribe",
        method = "post",
        operation_id = "unsubscribe_email"
    )]
    async fn unsubscribe_email(
        &self,
        state: Data<&AppState>,
        /// The `token` of the unsubscribe link (at most 256 characters).
        #[oai(validator(max_length = 256))]
        token: Query<Option<String>>,
        body: UnsubscribeBody,
    ) -> ApiResult<Unsubscribed> {
        let token = match (&body, token.0) {
            (UnsubscribeBody::Json(json), Some(query)) if query != json.0.token => {
                return Err(token_invalid());
            }
            (UnsubscribeBody::Json(json), _) => json.0.token.clone(),
            (UnsubscribeBody::Form(form), _) if form.0.list_unsubscribe != "One-Click" => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "The one-click body is `List-Unsubscribe=One-Click` (RFC 8058).",
                ));
            }
            (UnsubscribeBody::Form(_), Some(query)) => query,
            (UnsubscribeBody::Form(_), None) => return Err(token_invalid()),
        };
        if token.len() > TOKEN_MAX {
            return Err(token_invalid());
        }
        let what = crate::startup::unsubscribe_key(&state.settings)
            .verify(&token)
            .ok_or_else(token_invalid)?;
        if state.db.tenant_by_id(what.tenant).await?.is_none() {
            return Err(ApiError::new(
                ErrorCode::TenantNotFound,
                "The tenant of this unsubscribe link no longer exists.",
            ));
        }
        let mut tx = state.tenant_db.begin(what.tenant).await?;
        unsubscribe::unsubscribe(&mut tx, what.user, what.category)
            .await
            .map_err(ApiError::from)?;
        tx.commit().await?;
        tracing::info!(tenant_id = %what.tenant, user_id = %what.user, category = what.category.as_str(), "unsubscribed");
        Ok(Unsubscribed::Done)
    }
}
