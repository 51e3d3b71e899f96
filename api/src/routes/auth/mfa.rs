//! The signed-in user's two-factor authentication (`/v1/me/mfa`): its state, enrolling a
//! TOTP authenticator (the secret, its `otpauth://` URI and QR code, then a first code
//! that turns it on and yields the recovery codes), turning it off, and new recovery
//! codes. This module also holds what the login's second step (`mfa_login`) shares with
//! it: starting and confirming an enrollment, and the request types.
//!
//! Every change is audited (`mfa.enabled`, `mfa.disabled`, `mfa.recovery_codes_regenerated`)
//! and announced to the user by a security notice.

use chrono::{DateTime, Utc};
use identity::{
    ClientInfo, User, Verified,
    mfa::{self, RecoveryCode, SecondFactor, SecretsCipher, TotpSecret},
    store::{self, mfa as mfa_store, mfa::FactorOutcome},
};
use poem::{Request, web::Data};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, payload::Json};
use serde::Deserialize;
use serde_json::json;
use tenancy::{Tenant, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Principal, UserAuth, client_info},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{ApiTag, audit, auth::*, checks::check_present_password},
};

/// Two-factor authentication endpoints of the signed-in user.
pub struct MfaApi;

/// Where the user's two-factor authentication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TotpState {
    /// No authenticator.
    Disabled,
    /// An enrollment waits for its first code (`POST /v1/me/mfa/totp/confirm`).
    Pending,
    /// On: logins ask for a code.
    Enabled,
}

/// The user's two-factor authentication.
#[derive(Debug, Object)]
pub struct MfaStatus {
    /// The TOTP authenticator's state.
    pub totp: TotpState,
    /// When it was turned on.
    #[oai(skip_serializing_if_is_none)]
    pub enabled_at: Option<DateTime<Utc>>,
    /// Unused recovery codes left.
    pub recovery_codes_left: i64,
}

/// A new TOTP secret for an authenticator app (shown once; confirm it with a code).
#[derive(Debug, Object)]
pub struct TotpEnrollment {
    /// The secret in base32, for typing into the app.
    pub secret: String,
    /// `otpauth://totp/…` URI holding the secret (what the QR code encodes).
    pub otpauth_uri: String,
    /// The QR code of `otpauth_uri`, as an SVG document.
    pub qr_code_svg: String,
    /// HMAC algorithm of the codes (`SHA1`).
    pub algorithm: String,
    /// Digits per code (6).
    pub digits: u32,
    /// Seconds per code (30).
    pub period: u32,
}

/// Answer to starting an enrollment.
#[derive(ApiResponse)]
pub enum EnrollmentCreated {
    /// The pending enrollment; a code from the app turns it on.
    #[oai(status = 201)]
    Created(Json<TotpEnrollment>),
}

/// Recovery codes, shown this once.
#[derive(Debug, Object)]
pub struct RecoveryCodes {
    /// Ten single-use codes (`xxxx-xxxx-xxxx`), each usable instead of an authenticator
    /// code once. Only their hashes are kept: store them now.
    pub recovery_codes: Vec<String>,
}

/// A code from the authenticator app.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TotpCodeRequest {
    /// The app's current code: 6 digits.
    pub code: String,
}

impl Validate for TotpCodeRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_code(&mut errors, "code", &self.code);
        all_valid(errors)
    }
}

/// The password, and a second factor: exactly one of `code` and `recovery_code`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct DisableTotpRequest {
    /// The current password: 1 to 1024 bytes of UTF-8.
    pub password: String,
    /// The authenticator's current code: 6 digits.
    #[serde(default)]
    pub code: Option<String>,
    /// Or one of the recovery codes (`xxxx-xxxx-xxxx`).
    #[serde(default)]
    pub recovery_code: Option<String>,
}

impl Validate for DisableTotpRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_present_password(&mut errors, "password", &self.password);
        check_factor(
            &mut errors,
            self.code.as_deref(),
            self.recovery_code.as_deref(),
        );
        all_valid(errors)
    }
}

/// The current password.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// The current password: 1 to 1024 bytes of UTF-8.
    pub password: String,
}

impl Validate for PasswordRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_present_password(&mut errors, "password", &self.password);
        all_valid(errors)
    }
}

#[OpenApi(tag = "ApiTag::Auth")]
impl MfaApi {
    /// The current user's two-factor authentication.
    #[oai(path = "/v1/me/mfa", method = "get", operation_id = "get_mfa")]
    async fn get_mfa(&self, state: Data<&AppState>, auth: UserAuth) -> ApiResult<Json<MfaStatus>> {
        let me = auth.0;
        let mut tx = me.begin(&state).await?;
        let record = mfa_store::totp(&mut tx, me.user_id).await?;
        let left = mfa_store::recovery_codes_left(&mut tx, me.user_id).await?;
        tx.commit().await?;
        let (totp, enabled_at) = match record {
            None => (TotpState::Disabled, None),
            Some(r) => match r.confirmed_at {
                None => (TotpState::Pending, None),
                Some(at) => (TotpState::Enabled, Some(at)),
            },
        };
        Ok(Json(MfaStatus {
            totp,
            enabled_at,
            recovery_codes_left: left,
        }))
    }

    /// Start enrolling an authenticator app.
    ///
    /// Needs the password (a wrong one is a 422 and counts toward the account lockout), so
    /// that an access token alone cannot bind another authenticator to the account.
    /// Answers a new secret, its `otpauth://` URI and the URI's QR code (SVG); a code from
    /// the app (`POST /v1/me/mfa/totp/confirm`) turns it on. Starting again replaces a
    /// pending enrollment; with two-factor authentication already on, 409
    /// `mfa_already_enabled` (turn it off first).
    #[oai(
        path = "/v1/me/mfa/totp",
        method = "post",
        operation_id = "enroll_totp"
    )]
    async fn enroll_totp(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<PasswordRequest>,
    ) -> ApiResult<EnrollmentCreated> {
        let me = auth.0;
        let client = client_info(request);
        reauthenticate(&state, &me, &client, &body.0.password, "mfa.enroll_failed").await?;
        let mut tx = me.begin(&state).await?;
        let user = current_user(&mut tx, &me).await?;
        let enrollment = start_enrollment(&state, &mut tx, &me.tenant, &user).await?;
        tx.commit().await?;
        Ok(EnrollmentCreated::Created(Json(enrollment)))
    }

    /// Turn two-factor authentication on with a first code from the app.
    ///
    /// Answers the ten recovery codes, shown this once. A wrong code is a 422 naming
    /// `code`; without a pending enrollment, 409 `mfa_not_enabled`. Audited as
    /// `mfa.enabled`; a security notice is sent.
    #[oai(
        path = "/v1/me/mfa/totp/confirm",
        method = "post",
        operation_id = "confirm_totp"
    )]
    async fn confirm_totp(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<TotpCodeRequest>,
    ) -> ApiResult<Json<RecoveryCodes>> {
        let me = auth.0;
        let client = client_info(request);
        let mut tx = me.begin(&state).await?;
        let user = current_user(&mut tx, &me).await?;
        let actor = Actor {
            session: Some(me.session_id),
            client: &client,
        };
        let codes = match confirm_enrollment(&state, &mut tx, &user, &body.0.code, actor).await? {
            Confirmed::Yes(codes) => codes,
            Confirmed::WrongCode => {
                return Err(ApiError::validation(vec![FieldError::new(
                    "code",
                    FieldCode::Incorrect,
                    "is not the authenticator's current code",
                )]));
            }
        };
        tx.commit().await?;
        Ok(Json(RecoveryCodes {
            recovery_codes: codes,
        }))
    }

    /// Turn two-factor authentication off.
    ///
    /// Needs the password and the authenticator's current code (or a recovery code); a
    /// wrong one is a 422 naming it, and counts toward the account lockout. Removes the
    /// secret and the recovery codes. Audited as `mfa.disabled`; a security notice is
    /// sent. Without two-factor authentication, 409 `mfa_not_enabled`.
    #[oai(
        path = "/v1/me/mfa/totp",
        method = "delete",
        operation_id = "disable_totp"
    )]
    async fn disable_totp(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<DisableTotpRequest>,
    ) -> ApiResult<NoContent> {
        let me = auth.0;
        let client = client_info(request);
        let body = body.0;
        ensure_enabled(&state, &me).await?;
        reauthenticate(&state, &me, &client, &body.password, "mfa.disable_failed").await?;
        let factor = factor_of(body.code.as_deref(), body.recovery_code.as_deref());
        let mut tx = me.begin(&state).await?;
        let outcome = mfa_store::check_second_factor(
            &mut tx,
            &cipher(&state),
            me.tenant.id.0,
            me.user_id,
            factor,
            Utc::now(),
        )
        .await?;
        if outcome == FactorOutcome::Refused {
            tx.rollback().await?;
            let field = match factor {
                SecondFactor::Totp(_) => "code",
                SecondFactor::RecoveryCode(_) => "recovery_code",
            };
            count_failure(&state, &me, &client, "mfa.disable_failed", field).await?;
            return Err(ApiError::validation(vec![FieldError::new(
                field,
                FieldCode::Incorrect,
                "is wrong, already used, or not the current code",
            )]));
        }
        mfa_store::remove_totp(&mut tx, me.user_id).await?;
        audit::record(
            &mut tx,
            "mfa.disabled",
            Some(me.user_id),
            Some(me.user_id),
            Some(me.session_id),
            &client,
            json!({ "method": factor.method() }),
        )
        .await?;
        let user = current_user(&mut tx, &me).await?;
        send_notice(
            &mut tx,
            &user,
            "Two-factor authentication was turned off for your account.",
        )
        .await?;
        tx.commit().await?;
        Ok(NoContent::Done)
    }

    /// Replace the recovery codes.
    ///
    /// Needs the password (a wrong one is a 422 and counts toward the account lockout).
    /// Answers ten new codes, shown this once; the earlier ones stop working. Audited as
    /// `mfa.recovery_codes_regenerated`; a security notice is sent. Without two-factor
    /// authentication, 409 `mfa_not_enabled`.
    #[oai(
        path = "/v1/me/mfa/recovery-codes",
        method = "post",
        operation_id = "regenerate_recovery_codes"
    )]
    async fn regenerate_recovery_codes(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<PasswordRequest>,
    ) -> ApiResult<Json<RecoveryCodes>> {
        let me = auth.0;
        let client = client_info(request);
        ensure_enabled(&state, &me).await?;
        reauthenticate(
            &state,
            &me,
            &client,
            &body.0.password,
            "mfa.recovery_codes_failed",
        )
        .await?;
        let mut tx = me.begin(&state).await?;
        if !mfa_store::has_confirmed_totp(&mut tx, me.user_id).await? {
            // Turned off in the meantime.
            return Err(not_enabled());
        }
        let codes = RecoveryCode::generate_set();
        let hashes: Vec<Vec<u8>> = codes.iter().map(RecoveryCode::hash).collect();
        mfa_store::replace_recovery_codes(&mut tx, me.user_id, &hashes).await?;
        audit::record(
            &mut tx,
            "mfa.recovery_codes_regenerated",
            Some(me.user_id),
            Some(me.user_id),
            Some(me.session_id),
            &client,
            json!({ "codes": codes.len() }),
        )
        .await?;
        let user = current_user(&mut tx, &me).await?;
        send_notice(
            &mut tx,
            &user,
            "New two-factor recovery codes were made for your account; the earlier ones no longer work.",
        )
        .await?;
        tx.commit().await?;
        Ok(Json(RecoveryCodes {
            recovery_codes: codes.iter().map(|c| c.as_str().to_owned()).collect(),
        }))
    }
}

/// The cipher of the configured secrets key.
pub(crate) fn cipher(state: &AppState) -> SecretsCipher {
    SecretsCipher::new(state.settings.secrets.key())
}

/// The authenticated user's record (401 if the user is gone).
async fn current_user(tx: &mut TenantTx, me: &Principal) -> ApiResult<User> {
    store::user_by_id(tx, me.user_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "This user no longer exists."))
}

/// A 409 unless the user has two-factor authentication on.
async fn ensure_enabled(state: &AppState, me: &Principal) -> ApiResult<()> {
    let mut tx = me.begin(state).await?;
    let enabled = mfa_store::has_confirmed_totp(&mut tx, me.user_id).await?;
    tx.commit().await?;
    if enabled { Ok(()) } else { Err(not_enabled()) }
}

fn not_enabled() -> ApiError {
    ApiError::new(
        ErrorCode::MfaNotEnabled,
        "Two-factor authentication is not on for this account.",
    )
}

/// Checks the user's password (off the executor); a wrong one counts toward the lockout,
/// is audited as `event` and answered 422 naming `password`.
async fn reauthenticate(
    state: &AppState,
    me: &Principal,
    client: &ClientInfo,
    password: &str,
    event: &str,
) -> ApiResult<()> {
    let mut tx = me.begin(state).await?;
    let stored = store::password_hash(&mut tx, me.user_id).await?;
    tx.commit().await?;
    if state.hasher.verify(password, stored.as_deref()).await? == Verified::No {
        count_failure(state, me, client, event, "password").await?;
        return Err(ApiError::validation(vec![FieldError::new(
            "password",
            FieldCode::Incorrect,
            "is not the current password",
        )]));
    }
    Ok(())
}

/// Counts a wrong password or code of a signed-in user toward the lockout and audits it.
async fn count_failure(
    state: &AppState,
    me: &Principal,
    client: &ClientInfo,
    event: &str,
    field: &str,
) -> ApiResult<()> {
    let mut tx = me.begin(state).await?;
    store::record_login_failure(&mut tx, me.user_id, lockout_policy(&state.settings.auth)).await?;
    audit::record(
        &mut tx,
        event,
        Some(me.user_id),
        Some(me.user_id),
        Some(me.session_id),
        client,
        json!({ "wrong": field }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Who is acting, for audit events.
#[derive(Clone, Copy)]
pub(crate) struct Actor<'a> {
    /// Their session (none before login).
    pub(crate) session: Option<Uuid>,
    /// Where from.
    pub(crate) client: &'a ClientInfo,
}

/// Stores a new pending enrollment of `user` in `tx` (409 `mfa_already_enabled` when
/// two-factor authentication is on) and answers its secret, URI and QR code.
pub(crate) async fn start_enrollment(
    state: &AppState,
    tx: &mut TenantTx,
    tenant: &Tenant,
    user: &User,
) -> ApiResult<TotpEnrollment> {
    let secret = TotpSecret::generate();
    let sealed = cipher(state).seal(tenant.id.0, user.id, &secret);
    if !mfa_store::begin_totp_enrollment(tx, user.id, &sealed).await? {
        return Err(ApiError::new(
            ErrorCode::MfaAlreadyEnabled,
            "Two-factor authentication is already on; turn it off before enrolling again.",
        ));
    }
    let otpauth_uri = secret.otpauth_uri(&tenant.name, &user.email);
    let qr_code_svg = mfa::qr_svg(&otpauth_uri).map_err(ApiError::internal)?;
    Ok(TotpEnrollment {
        secret: secret.base32(),
        otpauth_uri,
        qr_code_svg,
        algorithm: "SHA1".to_owned(),
        digits: 6,
        period: 30,
    })
}

/// What confirming an enrollment did.
pub(crate) enum Confirmed {
    /// On, with these recovery codes.
    Yes(Vec<String>),
    /// The code is not the pending secret's (nothing changed).
    WrongCode,
}

/// Confirms the pending enrollment of `user` in `tx` with `code`: stores the recovery
/// codes, audits `mfa.enabled` and enqueues the notice. 409 without a pending enrollment.
pub(crate) async fn confirm_enrollment(
    state: &AppState,
    tx: &mut TenantTx,
    user: &User,
    code: &str,
    actor: Actor<'_>,
) -> ApiResult<Confirmed> {
    let record = mfa_store::totp(tx, user.id).await?;
    let record = match record {
        Some(r) if r.confirmed_at.is_none() => r,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::MfaAlreadyEnabled,
                "Two-factor authentication is already on.",
            ));
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::MfaNotEnabled,
                "No enrollment waits for confirmation; start one with `POST /v1/me/mfa/totp`.",
            ));
        }
    };
    let secret = cipher(state)
        .open(tx.tenant_id().0, user.id, &record.secret_ciphertext)
        .map_err(ApiError::internal)?;
    let Some(step) = secret.matching_step(code, mfa::step_at(Utc::now())) else {
        return Ok(Confirmed::WrongCode);
    };
    let codes = RecoveryCode::generate_set();
    let hashes: Vec<Vec<u8>> = codes.iter().map(RecoveryCode::hash).collect();
    if !mfa_store::confirm_totp_enrollment(tx, user.id, step, &hashes).await? {
        return Err(ApiError::new(
            ErrorCode::MfaAlreadyEnabled,
            "Two-factor authentication was turned on by another request.",
        ));
    }
    audit::record(
        tx,
        "mfa.enabled",
        Some(user.id),
        Some(user.id),
        actor.session,
        actor.client,
        json!({ "method": "totp" }),
    )
    .await?;
    send_notice(
        tx,
        user,
        "Two-factor authentication was turned on for your account.",
    )
    .await?;
    Ok(Confirmed::Yes(
        codes.iter().map(|c| c.as_str().to_owned()).collect(),
    ))
}

/// A 422's field error unless `code` is shaped like an authenticator code (6 digits).
pub(crate) fn check_code(errors: &mut Vec<FieldError>, field: &str, code: &str) {
    if code.len() != mfa::DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        errors.push(FieldError::new(
            field,
            FieldCode::Invalid,
            "must be 6 digits",
        ));
    }
}

/// Exactly one of `code` (6 digits) and `recovery_code` (at most 28 characters).
pub(crate) fn check_factor(
    errors: &mut Vec<FieldError>,
    code: Option<&str>,
    recovery_code: Option<&str>,
) {
    match (code, recovery_code) {
        (Some(code), None) => check_code(errors, "code", code),
        (None, Some(recovery)) => {
            if mfa::recovery_code_hash(recovery).is_none() {
                errors.push(FieldError::new(
                    "recovery_code",
                    FieldCode::Invalid,
                    "must be a recovery code such as `abcd-efgh-jkmn`",
                ));
            }
        }
        (None, None) => errors.push(FieldError::new(
            "code",
            FieldCode::Required,
            "send `code` (or `recovery_code`)",
        )),
        (Some(_), Some(_)) => errors.push(FieldError::new(
            "recovery_code",
            FieldCode::Invalid,
            "send `code` or `recovery_code`, not both",
        )),
    }
}

/// The factor of a body [`check_factor`] accepted.
pub(crate) fn factor_of<'a>(
    code: Option<&'a str>,
    recovery_code: Option<&'a str>,
) -> SecondFactor<'a> {
    match (code, recovery_code) {
        (_, Some(recovery)) => SecondFactor::RecoveryCode(recovery),
        (code, None) => SecondFactor::Totp(code.unwrap_or_default()),
    }
}
