//! Sign-up, registration, verification, login (with its second factor), token refresh,
//! logout, sessions, password recovery and change, two-factor authentication, and the public keys that verify access tokens: one module (and
//! one `#[OpenApi]` struct, combined in [`AuthApi`]) per flow. This module holds what the
//! flows share: the request and response types, and the helpers several flows (and the
//! invitations) use.

pub mod keys;
pub mod mfa;
pub mod mfa_login;
pub mod password;
pub mod recovery;
pub mod registration;
pub mod sessions;
pub mod signup;

use identity::{ClientInfo, OpaqueToken, User, link_emails, store::LockoutPolicy};
use jobs::Job;
use poem::Request;
use poem_openapi::{ApiResponse, Object, Union, payload::Json};
use serde::Deserialize;
use tenancy::{TenantSlug, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        client_info,
        throttle::{self, Counter},
    },
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{EmailText, Validate, all_valid},
    routes::{
        checks::{check_email, check_name, check_new_password, check_present_password},
        users::UserView,
        views::SessionView,
    },
    settings::AuthSettings,
    tenant::CurrentTenant,
};

/// The authentication endpoints: one API per flow, in the order the document lists them.
pub type AuthApi = (
    signup::SignupApi,
    registration::RegistrationApi,
    sessions::SessionsApi,
    mfa_login::MfaLoginApi,
    recovery::RecoveryApi,
    password::PasswordApi,
    mfa::MfaApi,
    keys::KeysApi,
);

/// The value of [`AuthApi`].
pub const AUTH_API: AuthApi = (
    signup::SignupApi,
    registration::RegistrationApi,
    sessions::SessionsApi,
    mfa_login::MfaLoginApi,
    recovery::RecoveryApi,
    password::PasswordApi,
    mfa::MfaApi,
    keys::KeysApi,
);

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

/// What a correct password leads to; `status` says which.
#[derive(Debug, Union)]
#[oai(discriminator_name = "status")]
pub enum LoginOutcome {
    /// Logged in: the session's tokens.
    #[oai(mapping = "authenticated")]
    Authenticated(TokenPair),
    /// The user has two-factor authentication: send a code with the MFA token to `POST
    /// /v1/auth/mfa`.
    #[oai(mapping = "mfa_required")]
    MfaRequired(MfaRequired),
    /// The tenant requires two-factor authentication of one of the user's roles and the
    /// user has none: enroll with the MFA token (`POST /v1/auth/mfa/enroll`, then
    /// `POST /v1/auth/mfa/enroll/confirm`), which logs in.
    #[oai(mapping = "mfa_enrollment_required")]
    MfaEnrollmentRequired(MfaEnrollmentRequired),
}

/// The password was right; the second factor is next.
#[derive(Debug, Object)]
pub struct MfaRequired {
    /// Opaque, single-use token for `POST /v1/auth/mfa` (never an access token).
    pub mfa_token: String,
    /// Seconds until the MFA token expires.
    pub expires_in: u64,
    /// What `POST /v1/auth/mfa` accepts: `totp` (`code`) and `recovery_code`.
    pub methods: Vec<String>,
}

/// The password was right; the tenant requires enrolling a second factor first.
#[derive(Debug, Object)]
pub struct MfaEnrollmentRequired {
    /// Opaque token for `POST /v1/auth/mfa/enroll` and `POST /v1/auth/mfa/enroll/confirm`
    /// only (never an access token); the confirmation spends it.
    pub mfa_token: String,
    /// Seconds until the MFA token expires.
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

/// A request for a link by email (reset, verification): throttled, then the job `job`
/// makes of the address is enqueued and `message` answered. The same work and the same
/// answer whether or not an account has the address; the job finds out.
async fn request_link<J: Job>(
    state: &AppState,
    request: &Request,
    tenant: &CurrentTenant,
    email: &str,
    job: impl FnOnce(String) -> J,
    message: &str,
) -> ApiResult<AcceptedResponse> {
    recovery_throttle(state, request, tenant).await?;
    let job = job(email.trim().to_owned()).to_job()?;
    let mut tx = tenant.begin(state).await?;
    jobs::enqueue(&mut tx, job).await?;
    tx.commit().await?;
    Ok(accepted(message))
}

/// Enqueues a security notice ("your password was changed", …) to `user` in `tx`.
pub(crate) async fn send_notice(tx: &mut TenantTx, user: &User, event: &str) -> ApiResult<()> {
    jobs::enqueue(tx, link_emails::notice(user, event)?).await?;
    Ok(())
}

/// The token pair of a new or refreshed session.
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

pub(crate) fn lockout_policy(settings: &AuthSettings) -> LockoutPolicy {
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

fn account_disabled() -> ApiError {
    ApiError::new(
        ErrorCode::AccountDisabled,
        "This account has been deactivated or banned; contact your administrator.",
    )
}
