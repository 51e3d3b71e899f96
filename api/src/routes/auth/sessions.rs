//! Login, token refresh, logout and the user's sessions.

use chrono::{DateTime, Utc};
use identity::{
    ClientInfo, Email, OpaqueToken, UserStatus, Verified,
    store::{self, LoginRecord, RefreshOutcome},
};
use poem::{Request, web::Data};
use poem_openapi::{OpenApi, param::Path, payload::Json};
use serde_json::json;
use tenancy::{TenantId, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        UserAuth, client_info,
        throttle::{self, Counter},
    },
    error::{ApiError, ApiResult, ErrorCode},
    payload::JsonBody,
    routes::{ApiTag, audit, auth::*},
    tenant::CurrentTenant,
};

/// Session endpoints.
pub struct SessionsApi;

#[OpenApi(tag = "ApiTag::Auth")]
impl SessionsApi {
    /// Log in.
    ///
    /// A wrong email and a wrong password get the same 401 `invalid_credentials`, in the
    /// same time. After repeated failures the account is locked for a while (403
    /// `account_locked`), and failures from one address are throttled (429).
    ///
    /// `status` says what the answer holds: `authenticated`, the session's tokens;
    /// `mfa_required` (the user has two-factor authentication), an MFA token for `POST
    /// /v1/auth/mfa`; `mfa_enrollment_required` (the tenant requires two-factor
    /// authentication of one of the user's roles, and the user has none yet), an MFA token
    /// for `POST /v1/auth/mfa/enroll`. No session exists before the second factor.
    #[oai(path = "/v1/auth/login", method = "post", operation_id = "log_in")]
    async fn login(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<LoginRequest>,
    ) -> ApiResult<Json<LoginOutcome>> {
        let client = client_info(request);
        let ip_key = throttle::key(Counter::LoginFailures, Some(tenant.0.id), client.ip);
        let max_failures = state.settings.auth.login_ip_max_failures;
        throttle::ensure_below(&state.redis, &ip_key, max_failures).await?;
        let body = body.0;
        let record = login_record(&state, &tenant, &body.email).await?;
        // The connection is back in the pool while the hash runs.
        let verified = state
            .hasher
            .verify(
                &body.password,
                record.as_ref().map(|r| r.password_hash.as_str()),
            )
            .await?;
        let (record, rehashed) = match (record, verified) {
            (Some(record), Verified::Yes) => (record, None),
            (Some(record), Verified::YesRehashed(hash)) => (record, Some(hash)),
            (record, _) => {
                let user = record.map(|r| r.user.id);
                let failure = LoginFailure {
                    user,
                    email: body.email.trim(),
                    client: &client,
                    ip_key: &ip_key,
                };
                return Err(failure.record(&state, &tenant).await?);
            }
        };
        ensure_may_log_in(record.user.status)?;
        let user = record.user.id;
        let rehash = rehashed.as_deref().map(|new| mfa_login::Rehash {
            previous: &record.password_hash,
            new,
        });
        if let Some(second_step) =
            mfa_login::second_step(&state, &tenant, user, rehash, &client).await?
        {
            return Ok(Json(second_step));
        }
        let pair = open_session(&state, &tenant, user, rehashed.as_deref(), &client).await?;
        Ok(Json(LoginOutcome::Authenticated(pair)))
    }

    /// Exchange a refresh token for new tokens.
    ///
    /// Every refresh rotates the refresh token. The same token presented again within a
    /// few seconds (a client racing itself, or retrying a lost response) yields the same
    /// new token; presented later, it is treated as stolen and the whole session is
    /// revoked (401 `refresh_token_reused`).
    #[oai(
        path = "/v1/auth/refresh",
        method = "post",
        operation_id = "refresh_tokens"
    )]
    async fn refresh(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<RefreshRequest>,
    ) -> ApiResult<Json<TokenPair>> {
        let client = client_info(request);
        let tenant_id = tenant.0.id;
        let invalid = || {
            ApiError::new(
                ErrorCode::InvalidToken,
                "The refresh token is not valid; log in again.",
            )
        };
        let presented = OpaqueToken::parse(&body.0.refresh_token).ok_or_else(invalid)?;
        let mut tx = tenant.begin(&state).await?;
        let outcome = store::refresh(
            &mut tx,
            &presented,
            state.settings.auth.refresh_grace,
            state.settings.jwt.refresh_ttl,
            &client,
        )
        .await?;
        match outcome {
            RefreshOutcome::Rotated {
                session,
                user,
                successor,
            }
            | RefreshOutcome::Replayed {
                session,
                user,
                successor,
            } => {
                tx.commit().await?;
                Ok(Json(token_pair(
                    &state,
                    tenant_id.0,
                    user,
                    session,
                    &successor,
                )?))
            }
            RefreshOutcome::Reused { session, user } => {
                Err(revoke_reused(&state, tx, tenant_id, session, user, &client).await?)
            }
            RefreshOutcome::UserBlocked { status } => {
                tx.rollback().await?;
                Err(match status {
                    UserStatus::Pending => invalid(),
                    UserStatus::SecurityIssue => password_reset_required(),
                    _ => account_disabled(),
                })
            }
            RefreshOutcome::Invalid => {
                tx.rollback().await?;
                Err(invalid())
            }
        }
    }

    /// Log out (this session).
    #[oai(path = "/v1/auth/logout", method = "post", operation_id = "log_out")]
    async fn logout(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
    ) -> ApiResult<NoContent> {
        let me = auth.0;
        end_sessions(
            &state,
            request,
            &me,
            SessionScope::One(me.session_id),
            "logout",
        )
        .await?;
        Ok(NoContent::Done)
    }

    /// Log out everywhere (every session of the current user, this one included).
    #[oai(
        path = "/v1/auth/logout-all",
        method = "post",
        operation_id = "logout_all"
    )]
    async fn logout_all(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
    ) -> ApiResult<NoContent> {
        end_sessions(&state, request, &auth.0, SessionScope::All, "logout_all").await?;
        Ok(NoContent::Done)
    }

    /// The current user's sessions (devices).
    #[oai(
        path = "/v1/auth/sessions",
        method = "get",
        operation_id = "list_sessions"
    )]
    async fn list_sessions(
        &self,
        state: Data<&AppState>,
        auth: UserAuth,
    ) -> ApiResult<Json<SessionList>> {
        let me = auth.0;
        let mut tx = me.begin(&state).await?;
        let sessions = store::list_sessions(&mut tx, me.user_id).await?;
        tx.commit().await?;
        Ok(Json(SessionList {
            items: sessions
                .into_iter()
                .map(|s| SessionView::of(s, me.session_id))
                .collect(),
        }))
    }

    /// End one of the current user's sessions.
    #[oai(
        path = "/v1/auth/sessions/:id",
        method = "delete",
        operation_id = "revoke_session"
    )]
    async fn revoke_session(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        /// Session id.
        id: Path<Uuid>,
    ) -> ApiResult<NoContent> {
        end_sessions(
            &state,
            request,
            &auth.0,
            SessionScope::One(id.0),
            "session_revoked",
        )
        .await?;
        Ok(NoContent::Done)
    }
}

pub(crate) fn account_locked(until: DateTime<Utc>) -> ApiError {
    let seconds = (until - Utc::now()).num_seconds().max(1);
    ApiError::retry_after(
        ErrorCode::AccountLocked,
        format!(
            "Too many failed logins: the account is locked until {}.",
            until.to_rfc3339()
        ),
        u64::try_from(seconds).unwrap_or(1),
    )
    .with_extension("locked_until", json!(until))
}

enum SessionScope {
    One(Uuid),
    All,
}

/// Ends sessions of the authenticated user (DB first, then the revocation list).
async fn end_sessions(
    state: &AppState,
    request: &Request,
    me: &crate::auth::Principal,
    scope: SessionScope,
    reason: &str,
) -> ApiResult<()> {
    let client = client_info(request);
    let tenant = me.tenant.id;
    let mut tx = me.begin(state).await?;
    let ended = match scope {
        SessionScope::One(id) => {
            if !store::revoke_session(&mut tx, me.user_id, id, reason).await? {
                tx.rollback().await?;
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    "You have no live session with this id.",
                ));
            }
            vec![id]
        }
        SessionScope::All => store::revoke_user_sessions(&mut tx, me.user_id, None, reason).await?,
    };
    audit::record(
        &mut tx,
        "session.revoked",
        Some(me.user_id),
        Some(me.user_id),
        Some(me.session_id),
        &client,
        json!({
            "reason": reason,
            "sessions": ended,
        }),
    )
    .await?;
    tx.commit().await?;
    state.revocations.revoke_sessions(tenant, &ended).await;
    Ok(())
}

/// The login record of `email`, which must not be locked (403 `account_locked`).
async fn login_record(
    state: &AppState,
    tenant: &CurrentTenant,
    email: &str,
) -> ApiResult<Option<LoginRecord>> {
    let mut tx = tenant.begin(state).await?;
    let record = store::login_record(&mut tx, &Email::new(email)).await?;
    tx.commit().await?;
    if let Some(until) = record
        .as_ref()
        .and_then(|r| r.locked_until)
        .filter(|until| *until > Utc::now())
    {
        return Err(account_locked(until));
    }
    Ok(record)
}

/// A failed login: a wrong password (`user` known) or an unknown email.
struct LoginFailure<'a> {
    user: Option<Uuid>,
    email: &'a str,
    client: &'a ClientInfo,
    ip_key: &'a str,
}

impl LoginFailure<'_> {
    /// Counts the failure (locking the account past the policy's limit), audits it, counts
    /// it against the client's address, and gives the answer: 401 `invalid_credentials`,
    /// or 403 `account_locked` when this failure locked the account.
    async fn record(self, state: &AppState, tenant: &CurrentTenant) -> ApiResult<ApiError> {
        let settings = &state.settings.auth;
        let Self {
            user,
            email,
            client,
            ip_key,
        } = self;
        let mut tx = tenant.begin(state).await?;
        let locked = match user {
            Some(user) => {
                store::record_login_failure(&mut tx, user, lockout_policy(settings)).await?
            }
            None => None,
        };
        let reason = if user.is_some() {
            "wrong_password"
        } else {
            "unknown_email"
        };
        let details = json!({ "email": email, "reason": reason });
        audit::record(&mut tx, "login.failed", None, user, None, client, details).await?;
        if let Some(until) = locked {
            let details = json!({ "locked_until": until });
            audit::record(&mut tx, "login.locked", None, user, None, client, details).await?;
        }
        tx.commit().await?;
        // Counted after the fact; a Redis failure here only loses one count.
        let _ = throttle::hit(
            &state.redis,
            ip_key,
            settings.login_ip_max_failures,
            settings.login_failure_window,
        )
        .await;
        Ok(match locked {
            Some(until) => account_locked(until),
            None => ApiError::new(
                ErrorCode::InvalidCredentials,
                "The email or the password is wrong.",
            ),
        })
    }
}

/// Only active users log in: a pending one must verify their address first, one with a
/// security issue must reset their password.
pub(crate) fn ensure_may_log_in(status: UserStatus) -> ApiResult<()> {
    match status {
        UserStatus::Active => Ok(()),
        UserStatus::Pending => Err(ApiError::new(
            ErrorCode::EmailNotVerified,
            "Verify your email address first: follow the link we sent you.",
        )),
        UserStatus::SecurityIssue => Err(password_reset_required()),
        UserStatus::Deactivated | UserStatus::Banned | UserStatus::Deleted => {
            Err(account_disabled())
        }
    }
}

/// The 403 of a user whose account has a security issue: a password reset brings them back.
fn password_reset_required() -> ApiError {
    ApiError::new(
        ErrorCode::PasswordResetRequired,
        "This account's sessions were ended for a security reason: reset your password (`POST /v1/auth/forgot-password`) to log in again.",
    )
}

/// Records the successful login (storing the rehashed password, if any), opens a session
/// and audits it; the session's tokens.
async fn open_session(
    state: &AppState,
    tenant: &CurrentTenant,
    user: Uuid,
    rehashed: Option<&str>,
    client: &ClientInfo,
) -> ApiResult<TokenPair> {
    let mut tx = tenant.begin(state).await?;
    let details = json!({ "rehashed": rehashed.is_some() });
    let pair = open_session_in(state, &mut tx, user, rehashed, client, details).await?;
    tx.commit().await?;
    Ok(pair)
}

/// [`open_session`] inside the caller's transaction (the second factor's, which spends
/// its MFA token in the same commit), auditing `login.succeeded` with `details`.
pub(crate) async fn open_session_in(
    state: &AppState,
    tx: &mut TenantTx,
    user: Uuid,
    rehashed: Option<&str>,
    client: &ClientInfo,
    details: serde_json::Value,
) -> ApiResult<TokenPair> {
    store::record_login_success(tx, user, rehashed).await?;
    let (session, refresh) =
        store::create_session(tx, user, client, state.settings.jwt.refresh_ttl).await?;
    audit::record(
        tx,
        "login.succeeded",
        Some(user),
        Some(user),
        Some(session.id),
        client,
        details,
    )
    .await?;
    token_pair(state, tx.tenant_id().0, user, session.id, &refresh)
}

/// A refresh token presented again after its grace window is taken for stolen: the
/// session is revoked (and audited) and the answer is 401 `refresh_token_reused`.
async fn revoke_reused(
    state: &AppState,
    mut tx: TenantTx,
    tenant: TenantId,
    session: Uuid,
    user: Uuid,
    client: &ClientInfo,
) -> ApiResult<ApiError> {
    audit::record(
        &mut tx,
        "refresh_token.reused",
        None,
        Some(user),
        Some(session),
        client,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    state.revocations.revoke_sessions(tenant, &[session]).await;
    tracing::warn!(%session, "refresh token reused: session revoked");
    Ok(ApiError::new(
        ErrorCode::RefreshTokenReused,
        "This refresh token was already used; the session has been revoked. Log in again.",
    ))
}
