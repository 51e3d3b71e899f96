//! Sign-up, registration, verification, login, token refresh, logout, sessions, password
//! recovery and change, and the public keys that verify access tokens.

use std::{sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use identity::{
    ClientInfo, Email, OpaqueToken, User, UserStatus, Verified,
    link_emails::{self, LinkEmail, LinkPurpose, PasswordResetRequested, VerificationRequested},
    membership,
    store::{self, AuditEvent, LockoutPolicy, NewUser, RefreshOutcome, Session, TokenPurpose},
};
use jobs::{Job, NewJob};
use poem::{Request, web::Data};
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use rbac::{SystemRole, store::RegistrationRole};
use serde::Deserialize;
use serde_json::json;
use tenancy::{BoxFuture, TenancyError, TenantSeed, TenantSlug, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        UserAuth, client_info,
        throttle::{self, Counter},
    },
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    limits::{self, Limited},
    payload::{EmailText, JsonBody, Validate, all_valid},
    routes::{
        ApiTag,
        users::{UserView, user_view},
    },
    settings::AuthSettings,
    tenant::{CurrentTenant, publish_change},
};

/// Authentication endpoints.
pub struct AuthApi;

/// Tokens for a session.
#[derive(Debug, Object)]
pub struct TokenPair {
    /// Short-lived JWT for `Authorization: Bearer …`.
    pub access_token: String,
    /// Opaque token for `POST /v1/auth/refresh`; single use (each refresh returns a new one).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// A new organization and its owner.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// The tenant's slug: lowercase DNS label, 3 to 63 characters, not reserved and not a UUID.
    #[oai(validator(
        min_length = 3,
        max_length = 63,
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    ))]
    pub tenant_slug: String,
    /// The organization's display name: 1 to 200 characters once surrounding whitespace is
    /// trimmed, without control characters.
    pub tenant_name: String,
    /// The owner's email address (surrounding whitespace is ignored; at most 254 bytes).
    pub email: EmailText,
    /// The owner's password: 12 to 128 characters, not a common one.
    #[oai(validator(min_length = 12, max_length = 128))]
    pub password: String,
    /// The owner's display name: 1 to 200 characters once surrounding whitespace is trimmed,
    /// without control characters.
    pub name: String,
}

impl Validate for SignupRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(reason) = TenantSlug::parse(&self.tenant_slug) {
            errors.push(FieldError::new(
                "tenant_slug",
                FieldCode::Invalid,
                format!("slug {reason}"),
            ));
        }
        if tenancy::validate_name(&self.tenant_name).is_err() {
            errors.push(FieldError::new(
                "tenant_name",
                FieldCode::Length,
                "must be 1 to 200 characters",
            ));
        }
        check_email(&mut errors, "email", &self.email);
        check_new_password(&mut errors, "password", &self.password);
        check_name(&mut errors, "name", &self.name);
        all_valid(errors)
    }
}

/// The tenant made by a sign-up.
#[derive(Debug, Object)]
pub struct SignupTenant {
    /// Tenant id (usable in `X-Tenant`).
    pub id: Uuid,
    /// Slug (subdomain; usable in `X-Tenant`).
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// Answer to a sign-up.
#[derive(Debug, Object)]
pub struct SignupResponse {
    /// The new tenant.
    pub tenant: SignupTenant,
    /// Its owner (a verification email is on its way).
    pub user: UserView,
    /// The owner's first session.
    pub tokens: TokenPair,
}

/// Answer to sign-up.
#[derive(ApiResponse)]
pub enum SignupCreated {
    /// The tenant and its owner exist; the owner is logged in.
    #[oai(status = 201)]
    Created(Json<SignupResponse>),
}

/// A new member of the tenant.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Email address; a verification link is sent there (surrounding whitespace is ignored; at
    /// most 254 bytes).
    pub email: EmailText,
    /// 12 to 128 characters, not a common one.
    #[oai(validator(min_length = 12, max_length = 128))]
    pub password: String,
    /// Display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: String,
}

impl Validate for RegisterRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_email(&mut errors, "email", &self.email);
        check_new_password(&mut errors, "password", &self.password);
        check_name(&mut errors, "name", &self.name);
        all_valid(errors)
    }
}

/// Email and password.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email address, any case (surrounding whitespace is ignored; at most 254 bytes).
    pub email: EmailText,
    /// Password, exactly as set: 1 to 1024 bytes of UTF-8.
    #[oai(validator(min_length = 1))]
    pub password: String,
}

impl Validate for LoginRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_email(&mut errors, "email", &self.email);
        check_present_password(&mut errors, "password", &self.password);
        all_valid(errors)
    }
}

/// A refresh token.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

impl Validate for RefreshRequest {}

/// A token from an email link.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The `token` query parameter of the link.
    pub token: String,
}

impl Validate for VerifyEmailRequest {}

/// An email address.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// Email address (surrounding whitespace is ignored; at most 254 bytes).
    pub email: EmailText,
}

impl Validate for EmailRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_email(&mut errors, "email", &self.email);
        all_valid(errors)
    }
}

/// A reset token and the new password.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The `token` query parameter of the reset link.
    pub token: String,
    /// The new password: 12 to 128 characters, not a common one.
    #[oai(validator(min_length = 12, max_length = 128))]
    pub password: String,
}

impl Validate for ResetPasswordRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_new_password(&mut errors, "password", &self.password);
        all_valid(errors)
    }
}

/// The current and the new password.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password now: 1 to 1024 bytes of UTF-8.
    #[oai(validator(min_length = 1))]
    pub current_password: String,
    /// The new password: 12 to 128 characters, not a common one.
    #[oai(validator(min_length = 12, max_length = 128))]
    pub new_password: String,
}

impl Validate for ChangePasswordRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_present_password(&mut errors, "current_password", &self.current_password);
        check_new_password(&mut errors, "new_password", &self.new_password);
        all_valid(errors)
    }
}

/// An acknowledgement that says nothing about whether an account exists.
#[derive(Debug, Object)]
pub struct Accepted {
    /// What happens next.
    pub message: String,
}

/// Answer to requests that send email.
#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Accepted; an email follows if there is anyone to send it to.
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
}

/// Answer with no body.
#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

/// A session of the current user.
#[derive(Debug, Object)]
pub struct SessionView {
    /// Session id.
    pub id: Uuid,
    /// User agent at login.
    pub user_agent: Option<String>,
    /// IP address of the last use.
    pub ip: Option<String>,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// Whether this request comes from this session.
    pub current: bool,
}

/// The current user's live sessions.
#[derive(Debug, Object)]
pub struct SessionList {
    /// Most recently used first.
    pub items: Vec<SessionView>,
}

/// One public key (RFC 8037 OKP JWK).
#[derive(Debug, Object)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// Public key, base64url.
    pub x: String,
    /// Key id (the `kid` header of tokens it verifies).
    pub kid: String,
    /// `sig`.
    #[oai(rename = "use")]
    pub use_: String,
    /// `EdDSA`.
    pub alg: String,
}

/// The keys verifying access tokens.
#[derive(Debug, Object)]
pub struct Jwks {
    /// Newest first; the first signs new tokens.
    pub keys: Vec<Jwk>,
}

#[OpenApi(tag = "ApiTag::Auth")]
impl AuthApi {
    /// Sign up an organization.
    ///
    /// Creates the tenant and its owner in one step (all or nothing), sends the owner a
    /// verification email, and logs the owner in. A taken slug is 409 `slug_taken`.
    #[oai(path = "/v1/signup", method = "post", operation_id = "sign_up")]
    async fn signup(
        &self,
        state: Data<&AppState>,
        request: &Request,
        body: JsonBody<SignupRequest>,
    ) -> ApiResult<SignupCreated> {
        let client = client_info(request);
        let key = throttle::key(Counter::Signup, None, client.ip);
        throttle::hit(
            &state.redis,
            &key,
            state.settings.auth.signup_ip_max_requests,
            Duration::from_secs(3600),
        )
        .await?;
        let body = body.0;
        let slug = TenantSlug::parse(&body.tenant_slug).map_err(TenancyError::from)?;
        let password_hash = state.hasher.hash(&body.password).await?;
        let seed = OwnerSeed {
            email: Email::new(&body.email),
            name: body.name.trim().to_owned(),
            password_hash,
            client,
            refresh_ttl: state.settings.jwt.refresh_ttl,
            created: Mutex::new(None),
        };
        let tenant = state
            .db
            .create_tenant_seeded(&slug, &body.tenant_name, &seed)
            .await?;
        publish_change(&state, tenant.id).await;
        let (user, session, refresh) = seed
            .created
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the owner seed did not run")))?;
        tracing::info!(tenant_id = %tenant.id, slug = %tenant.slug, "signed up");
        let mut tx = state.tenant_db.begin(tenant.id).await?;
        let user = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        let tokens = token_pair(&state, tenant.id.0, user.id, session.id, &refresh)?;
        Ok(SignupCreated::Created(Json(SignupResponse {
            tenant: SignupTenant {
                id: tenant.id.0,
                slug: tenant.slug.to_string(),
                name: tenant.name.clone(),
            },
            user,
            tokens,
        })))
    }

    /// Register a member.
    ///
    /// Creates a `pending` user and emails a verification link; the user can log in once
    /// verified. The answer is the same whether or not the address is already registered
    /// (its owner then gets a notice instead), and whether or not the tenant's
    /// registration policy admits the address (`invite_only` admits none, `domain` those
    /// of its domains): a refused registration makes nothing. The user gets the tenant's
    /// registration role (`viewer` by default).
    #[oai(
        path = "/v1/auth/register",
        method = "post",
        operation_id = "register_user"
    )]
    async fn register(
        &self,
        state: Data<&AppState>,
        request: &Request,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        body: JsonBody<RegisterRequest>,
    ) -> ApiResult<AcceptedResponse> {
        let client = recovery_throttle(&state, request, &tenant).await?;
        let body = body.0;
        let email = Email::new(&body.email);
        // Hashed whether or not the address is taken: both answers take the same time.
        let password_hash = state.hasher.hash(&body.password).await?;
        let mut tx = state.tenant_db.begin(tenant.0.id).await?;
        let registration = membership::registration(&mut tx).await?;
        if registration.role_id.is_some() {
            // Granting a custom role is an assignment, serialised with role changes like
            // every other; the roles lock comes before the seat lock, as everywhere.
            rbac::store::lock_roles(&mut tx)
                .await
                .map_err(ApiError::internal)?;
        }
        // Before looking the address up: a full tenant answers the same for every address.
        limits::ensure_room(&state, &mut tx, &tenant.0, Limited::Seats, 1).await?;
        let existing = store::user_by_email(&mut tx, &email).await?;
        match existing {
            Some(user) => {
                send_notice(&mut tx, &user, "Someone tried to register a new account with your email address. If it was you, log in instead, or reset your password if you forgot it.")
                    .await?;
            }
            // The tenant's policy does not admit this address: nothing is made, and the
            // answer is the one a taken address gets.
            None if !registration.admits(email.key()) => {
                tracing::debug!("registration refused by the tenant's policy");
            }
            None => {
                let user = store::insert_user(
                    &mut tx,
                    NewUser {
                        email: &email,
                        name: body.name.trim(),
                        password_hash: &password_hash,
                        status: UserStatus::Pending,
                    },
                )
                .await?;
                grant_registration_role(&mut tx, user.id, registration.role_id).await?;
                // The job mints the link when it sends it: no payload holds a secret.
                jobs::enqueue(
                    &mut tx,
                    LinkEmail {
                        user_id: user.id,
                        purpose: LinkPurpose::VerifyEmail,
                    }
                    .to_job()?,
                )
                .await?;
                audit(
                    &mut tx,
                    "user.registered",
                    Some(user.id),
                    Some(user.id),
                    None,
                    &client,
                    json!({}),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(accepted(
            "Check your inbox: a verification link is on its way.",
        ))
    }

    /// Verify an email address.
    ///
    /// Uses up the token from the verification link; a pending user becomes active.
    #[oai(
        path = "/v1/auth/verify-email",
        method = "post",
        operation_id = "verify_email"
    )]
    async fn verify_email(
        &self,
        state: Data<&AppState>,
        request: &Request,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        body: JsonBody<VerifyEmailRequest>,
    ) -> ApiResult<Json<UserView>> {
        let client = client_info(request);
        let token = OpaqueToken::parse(&body.0.token).ok_or_else(link_invalid)?;
        let mut tx = state.tenant_db.begin(tenant.0.id).await?;
        let user = store::consume_user_token(&mut tx, &token, TokenPurpose::VerifyEmail)
            .await?
            .ok_or_else(link_invalid)?;
        let activated = store::mark_email_verified(&mut tx, user).await?;
        limits::ensure_seats(&state, &mut tx, &tenant.0, activated).await?;
        audit(
            &mut tx,
            "email.verified",
            Some(user),
            Some(user),
            None,
            &client,
            json!({}),
        )
        .await?;
        let user = store::user_by_id(&mut tx, user)
            .await?
            .ok_or_else(link_invalid)?;
        let view = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(Json(view))
    }

    /// Send a new verification link.
    ///
    /// The answer is the same whether or not a pending account has this address.
    #[oai(
        path = "/v1/auth/resend-verification",
        method = "post",
        operation_id = "resend_verification"
    )]
    async fn resend_verification(
        &self,
        state: Data<&AppState>,
        request: &Request,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        body: JsonBody<EmailRequest>,
    ) -> ApiResult<AcceptedResponse> {
        recovery_throttle(&state, request, &tenant).await?;
        let email = body.0.email.trim().to_owned();
        enqueue_request(&state, &tenant, VerificationRequested { email }.to_job()?).await?;
        Ok(accepted(
            "If a pending account has this address, a new verification link is on its way.",
        ))
    }

    /// Log in.
    ///
    /// A wrong email and a wrong password get the same 401 `invalid_credentials`, in the
    /// same time. After repeated failures the account is locked for a while (403
    /// `account_locked`), and failures from one address are throttled (429).
    #[oai(path = "/v1/auth/login", method = "post", operation_id = "log_in")]
    async fn login(
        &self,
        state: Data<&AppState>,
        request: &Request,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        body: JsonBody<LoginRequest>,
    ) -> ApiResult<Json<TokenPair>> {
        let settings = &state.settings.auth;
        let client = client_info(request);
        let tenant_id = tenant.0.id;
        let ip_key = throttle::key(Counter::LoginFailures, Some(tenant_id), client.ip);
        throttle::ensure_below(&state.redis, &ip_key, settings.login_ip_max_failures).await?;

        let body = body.0;
        let mut tx = state.tenant_db.begin(tenant_id).await?;
        let record = store::login_record(&mut tx, &Email::new(&body.email)).await?;
        tx.commit().await?;
        if let Some(until) = record
            .as_ref()
            .and_then(|r| r.locked_until)
            .filter(|until| *until > Utc::now())
        {
            return Err(account_locked(until));
        }
        // The connection is back in the pool while the hash runs.
        let verified = state
            .hasher
            .verify(
                &body.password,
                record.as_ref().map(|r| r.password_hash.as_str()),
            )
            .await?;
        let (record, rehashed) =
            match (record, verified) {
                (Some(record), Verified::Yes) => (record, None),
                (Some(record), Verified::YesRehashed(hash)) => (record, Some(hash)),
                (record, _) => {
                    let user = record.map(|r| r.user.id);
                    let policy = lockout_policy(settings);
                    let mut tx = state.tenant_db.begin(tenant_id).await?;
                    let locked = match user {
                        Some(user) => store::record_login_failure(&mut tx, user, policy).await?,
                        None => None,
                    };
                    audit(&mut tx, "login.failed", None, user, None, &client, json!({
                    "email": body.email.trim(),
                    "reason": if user.is_some() { "wrong_password" } else { "unknown_email" },
                }))
                .await?;
                    if let Some(until) = locked {
                        audit(
                            &mut tx,
                            "login.locked",
                            None,
                            user,
                            None,
                            &client,
                            json!({ "locked_until": until }),
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    // Counted after the fact; a Redis failure here only loses one count.
                    let _ = throttle::hit(
                        &state.redis,
                        &ip_key,
                        settings.login_ip_max_failures,
                        settings.login_failure_window,
                    )
                    .await;
                    return Err(match locked {
                        Some(until) => account_locked(until),
                        None => ApiError::new(
                            ErrorCode::InvalidCredentials,
                            "The email or the password is wrong.",
                        ),
                    });
                }
            };
        match record.user.status {
            UserStatus::Active => {}
            UserStatus::Pending => {
                return Err(ApiError::new(
                    ErrorCode::EmailNotVerified,
                    "Verify your email address first: follow the link we sent you.",
                ));
            }
            UserStatus::Deactivated | UserStatus::Banned => {
                return Err(account_disabled());
            }
        }
        let user = record.user.id;
        let mut tx = state.tenant_db.begin(tenant_id).await?;
        store::record_login_success(&mut tx, user, rehashed.as_deref()).await?;
        let (session, refresh) =
            store::create_session(&mut tx, user, &client, state.settings.jwt.refresh_ttl).await?;
        audit(
            &mut tx,
            "login.succeeded",
            Some(user),
            Some(user),
            Some(session.id),
            &client,
            json!({
                "rehashed": rehashed.is_some(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(Json(token_pair(
            &state,
            tenant_id.0,
            user,
            session.id,
            &refresh,
        )?))
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
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
        let mut tx = state.tenant_db.begin(tenant_id).await?;
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
                audit(
                    &mut tx,
                    "refresh_token.reused",
                    None,
                    Some(user),
                    Some(session),
                    &client,
                    json!({}),
                )
                .await?;
                tx.commit().await?;
                state
                    .revocations
                    .revoke_sessions(tenant_id, &[session])
                    .await;
                tracing::warn!(%session, "refresh token reused: session revoked");
                Err(ApiError::new(
                    ErrorCode::RefreshTokenReused,
                    "This refresh token was already used; the session has been revoked. Log in again.",
                ))
            }
            RefreshOutcome::UserBlocked { status } => {
                tx.rollback().await?;
                Err(match status {
                    UserStatus::Pending => invalid(),
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
    ) -> ApiResult<Json<SessionList>> {
        let me = auth.0;
        let mut tx = state.tenant_db.begin(me.tenant.id).await?;
        let sessions = store::list_sessions(&mut tx, me.user_id).await?;
        tx.commit().await?;
        Ok(Json(SessionList {
            items: sessions
                .into_iter()
                .map(|s: Session| SessionView {
                    current: s.id == me.session_id,
                    id: s.id,
                    user_agent: s.user_agent,
                    ip: s.ip,
                    created_at: s.created_at,
                    last_used_at: s.last_used_at,
                })
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        body: JsonBody<EmailRequest>,
    ) -> ApiResult<AcceptedResponse> {
        recovery_throttle(&state, request, &tenant).await?;
        let email = body.0.email.trim().to_owned();
        enqueue_request(&state, &tenant, PasswordResetRequested { email }.to_job()?).await?;
        Ok(accepted(
            "If an account has this address, a password reset link is on its way.",
        ))
    }

    /// Set a new password with a reset link.
    ///
    /// The link works once. Every session of the user ends, and a security notice is sent.
    #[oai(
        path = "/v1/auth/reset-password",
        method = "post",
        operation_id = "reset_password"
    )]
    async fn reset_password(
        &self,
        state: Data<&AppState>,
        request: &Request,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        tenant: CurrentTenant,
        body: JsonBody<ResetPasswordRequest>,
    ) -> ApiResult<NoContent> {
        let client = recovery_throttle(&state, request, &tenant).await?;
        let token = OpaqueToken::parse(&body.0.token).ok_or_else(link_invalid)?;
        let hash = state.hasher.hash(&body.0.password).await?;
        let tenant_id = tenant.0.id;
        let mut tx = state.tenant_db.begin(tenant_id).await?;
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
        let ended = store::revoke_user_sessions(&mut tx, user, None, "password_reset").await?;
        audit(
            &mut tx,
            "password.reset",
            Some(user),
            Some(user),
            None,
            &client,
            json!({ "sessions_ended": ended.len() }),
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
        Ok(NoContent::Done)
    }

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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        body: JsonBody<ChangePasswordRequest>,
    ) -> ApiResult<NoContent> {
        let me = auth.0;
        let client = client_info(request);
        let tenant_id = me.tenant.id;
        let mut tx = state.tenant_db.begin(tenant_id).await?;
        let stored = store::password_hash(&mut tx, me.user_id).await?;
        tx.commit().await?;
        let verified = state
            .hasher
            .verify(&body.0.current_password, stored.as_deref())
            .await?;
        if verified == Verified::No {
            let mut tx = state.tenant_db.begin(tenant_id).await?;
            let policy = lockout_policy(&state.settings.auth);
            store::record_login_failure(&mut tx, me.user_id, policy).await?;
            audit(
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
        let mut tx = state.tenant_db.begin(tenant_id).await?;
        store::set_password(&mut tx, me.user_id, &hash, false).await?;
        let ended = store::revoke_user_sessions(
            &mut tx,
            me.user_id,
            Some(me.session_id),
            "password_changed",
        )
        .await?;
        audit(
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

    /// Public keys verifying access tokens (JWKS).
    ///
    /// Every key not yet retired; tokens name theirs in the `kid` header.
    #[oai(
        path = "/.well-known/jwks.json",
        method = "get",
        operation_id = "get_jwks"
    )]
    async fn jwks(&self, state: Data<&AppState>) -> ApiResult<Json<Jwks>> {
        Ok(Json(Jwks {
            keys: state
                .tokens
                .jwks()
                .into_iter()
                .map(|k| Jwk {
                    kty: k.kty.to_owned(),
                    crv: k.crv.to_owned(),
                    x: k.x,
                    kid: k.kid,
                    use_: k.use_.to_owned(),
                    alg: k.alg.to_owned(),
                })
                .collect(),
        }))
    }
}

/// Creates the owner inside the provisioning transaction of a sign-up.
struct OwnerSeed {
    email: Email,
    name: String,
    password_hash: String,
    client: ClientInfo,
    refresh_ttl: Duration,
    created: Mutex<Option<(User, Session, OpaqueToken)>>,
}

impl TenantSeed for OwnerSeed {
    fn name(&self) -> &'static str {
        "owner"
    }

    fn seed<'a>(&'a self, tx: &'a mut TenantTx) -> BoxFuture<'a, Result<(), TenancyError>> {
        Box::pin(async move {
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| TenancyError::Seed {
                seed: "owner",
                source: e,
            };
            let user = store::insert_user(
                tx,
                NewUser {
                    email: &self.email,
                    name: &self.name,
                    password_hash: &self.password_hash,
                    status: UserStatus::Active,
                },
            )
            .await
            .map_err(|e| failed(e.into()))?;
            rbac::store::grant_system_role(tx, user.id, SystemRole::Owner)
                .await
                .map_err(|e| failed(e.into()))?;
            let (session, refresh) =
                store::create_session(tx, user.id, &self.client, self.refresh_ttl)
                    .await
                    .map_err(|e| failed(e.into()))?;
            let link = LinkEmail {
                user_id: user.id,
                purpose: LinkPurpose::VerifyEmail,
            };
            jobs::enqueue(tx, link.to_job().map_err(|e| failed(e.into()))?)
                .await
                .map_err(|e| failed(e.into()))?;
            audit(
                tx,
                "signup",
                Some(user.id),
                Some(user.id),
                Some(session.id),
                &self.client,
                json!({}),
            )
            .await
            .map_err(|e| failed(Box::new(e)))?;
            *self.created.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((user, session, refresh));
            Ok(())
        })
    }
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
    let mut tx = state.tenant_db.begin(tenant).await?;
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
    audit(
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

/// Gives a self-registered user the tenant's registration role when it still qualifies
/// (it may have been changed since it was chosen), else `viewer`, the least there is.
/// Call under the roles lock when `role` is given.
async fn grant_registration_role(
    tx: &mut TenantTx,
    user: Uuid,
    role: Option<Uuid>,
) -> ApiResult<()> {
    if let Some(role) = role {
        let roles = rbac::store::list_roles(tx)
            .await
            .map_err(ApiError::internal)?;
        match rbac::store::registration_role(&roles, role) {
            RegistrationRole::Allowed(_) => {
                return rbac::store::set_user_roles(tx, user, &[role], None)
                    .await
                    .map_err(ApiError::internal);
            }
            refused => {
                tracing::warn!(%role, ?refused, "the registration role no longer qualifies; granting viewer");
            }
        }
    }
    rbac::store::grant_system_role(tx, user, SystemRole::Viewer)
        .await
        .map_err(ApiError::internal)
}

/// Counts a recovery request from this client (429 past the limit, 503 without Redis).
pub(crate) async fn recovery_throttle(
    state: &AppState,
    request: &Request,
    tenant: &CurrentTenant,
) -> ApiResult<ClientInfo> {
    let client = client_info(request);
    let key = throttle::key(Counter::Recovery, Some(tenant.0.id), client.ip);
    throttle::hit(
        &state.redis,
        &key,
        state.settings.auth.recovery_ip_max_requests,
        state.settings.auth.login_failure_window,
    )
    .await?;
    Ok(client)
}

/// Enqueues an email request job: the same work whether or not the account exists.
async fn enqueue_request(state: &AppState, tenant: &CurrentTenant, job: NewJob) -> ApiResult<()> {
    let mut tx = state.tenant_db.begin(tenant.0.id).await?;
    jobs::enqueue(&mut tx, job).await?;
    tx.commit().await?;
    Ok(())
}

/// Enqueues a security notice ("your password was changed", …) to `user` in `tx`.
async fn send_notice(tx: &mut TenantTx, user: &User, event: &str) -> ApiResult<()> {
    jobs::enqueue(tx, link_emails::notice(user, event)?).await?;
    Ok(())
}

/// Appends an audit event in `tx`.
pub(crate) async fn audit(
    tx: &mut TenantTx,
    event: &str,
    actor: Option<Uuid>,
    subject: Option<Uuid>,
    session: Option<Uuid>,
    client: &ClientInfo,
    details: serde_json::Value,
) -> Result<(), identity::StoreError> {
    store::audit(
        tx,
        AuditEvent {
            event,
            actor,
            subject,
            session,
            client,
            details,
        },
    )
    .await
}

pub(crate) fn token_pair(
    state: &AppState,
    tenant: Uuid,
    user: Uuid,
    session: Uuid,
    refresh: &OpaqueToken,
) -> ApiResult<TokenPair> {
    let (access_token, _) = state.tokens.issue(user, tenant, session)?;
    Ok(TokenPair {
        access_token,
        refresh_token: refresh.encode(),
        token_type: "Bearer".to_owned(),
        expires_in: state.tokens.ttl().as_secs(),
    })
}

fn lockout_policy(settings: &AuthSettings) -> LockoutPolicy {
    LockoutPolicy {
        max_failures: settings.login_max_failures,
        window: settings.login_failure_window,
        lockout: settings.login_lockout,
    }
}

fn accepted(message: &str) -> AcceptedResponse {
    AcceptedResponse::Accepted(Json(Accepted {
        message: message.to_owned(),
    }))
}

fn link_invalid() -> ApiError {
    ApiError::new(
        ErrorCode::LinkInvalid,
        "This link is unknown, already used or expired; ask for a new one.",
    )
}

fn account_locked(until: DateTime<Utc>) -> ApiError {
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

fn account_disabled() -> ApiError {
    ApiError::new(
        ErrorCode::AccountDisabled,
        "This account has been deactivated or banned; contact your administrator.",
    )
}

pub(crate) fn check_email(errors: &mut Vec<FieldError>, field: &str, email: &str) {
    if !email::is_valid_address(email.trim()) {
        errors.push(FieldError::new(
            field,
            FieldCode::Invalid,
            "must be an email address such as ada@example.com",
        ));
    }
}

pub(crate) fn check_new_password(errors: &mut Vec<FieldError>, field: &str, password: &str) {
    if let Err(violation) = identity::check_policy(password) {
        errors.push(FieldError::new(
            field,
            match violation {
                identity::PolicyViolation::TooShort => FieldCode::TooShort,
                identity::PolicyViolation::TooLong => FieldCode::TooLong,
                identity::PolicyViolation::Common => FieldCode::Common,
            },
            format!("{field} {violation}"),
        ));
    }
}

fn check_present_password(errors: &mut Vec<FieldError>, field: &str, password: &str) {
    if password.is_empty() || password.len() > 1024 {
        errors.push(FieldError::new(
            field,
            FieldCode::Invalid,
            "must be 1 to 1024 bytes",
        ));
    }
}

pub(crate) fn check_name(errors: &mut Vec<FieldError>, field: &str, name: &str) {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            FieldCode::Length,
            "must be 1 to 200 characters, without control characters",
        ));
    }
}
