//! The login's second step. A correct password of a user with two-factor authentication
//! answers an MFA token instead of tokens (`second_step`); `POST /v1/auth/mfa` takes it
//! with an authenticator or recovery code and opens the session. A user whose role the
//! tenant's `mfa_required_for` lists, and who has no authenticator yet, gets an enrollment
//! token instead, which only the enrollment endpoints here accept: enforcement stays out
//! of the per-request authentication (a user without two-factor authentication never
//! holds an access token while the policy applies to them).
//!
//! MFA tokens are opaque (stored hashed in the tenant's schema, so another tenant does not
//! know them), live five minutes, are spent by the login they complete, and die after five
//! wrong codes. Wrong codes count toward the account lockout and the address's throttle
//! exactly as wrong passwords do, and a locked account's second step is refused like its
//! password step.

use std::time::Duration;

use chrono::Utc;
use identity::{
    ClientInfo, OpaqueToken,
    store::{
        self,
        mfa::{self as mfa_store, Challenge, ChallengePurpose, FactorOutcome},
    },
};
use poem::{Request, web::Data};
use poem_openapi::{Object, OpenApi, payload::Json};
use serde::Deserialize;
use serde_json::json;
use tenancy::TenantTx;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{
        client_info,
        throttle::{self, Counter},
    },
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{
        ApiTag, audit,
        auth::{
            mfa::{
                Actor, Confirmed, TotpEnrollment, check_code, check_factor, cipher,
                confirm_enrollment, factor_of, start_enrollment,
            },
            sessions::{account_locked, ensure_may_log_in, open_session_in},
            *,
        },
    },
    tenant::CurrentTenant,
};

/// How long an MFA token works.
pub const MFA_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Wrong codes an MFA token survives (the next login starts over with the password).
pub const MFA_TOKEN_MAX_FAILURES: u32 = 5;

/// The login's second step.
pub struct MfaLoginApi;

/// An MFA token and a second factor: exactly one of `code` and `recovery_code`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    /// The `mfa_token` of the login's answer.
    pub mfa_token: String,
    /// The authenticator's current code: 6 digits.
    #[serde(default)]
    pub code: Option<String>,
    /// Or one of the recovery codes (`xxxx-xxxx-xxxx`); each works once.
    #[serde(default)]
    pub recovery_code: Option<String>,
}

impl Validate for MfaLoginRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_factor(
            &mut errors,
            self.code.as_deref(),
            self.recovery_code.as_deref(),
        );
        all_valid(errors)
    }
}

/// An enrollment token.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MfaEnrollRequest {
    /// The `mfa_token` of a login answered `mfa_enrollment_required`.
    pub mfa_token: String,
}

impl Validate for MfaEnrollRequest {}

/// An enrollment token and the first code of the new authenticator.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MfaEnrollConfirmRequest {
    /// The `mfa_token` of a login answered `mfa_enrollment_required`.
    pub mfa_token: String,
    /// The app's current code: 6 digits.
    pub code: String,
}

impl Validate for MfaEnrollConfirmRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_code(&mut errors, "code", &self.code);
        all_valid(errors)
    }
}

/// Two-factor authentication turned on at login: the recovery codes and the session.
#[derive(Debug, Object)]
pub struct EnrolledLogin {
    /// Ten single-use recovery codes, shown this once (only their hashes are kept).
    pub recovery_codes: Vec<String>,
    /// The session's tokens.
    pub tokens: TokenPair,
}

#[OpenApi(tag = "ApiTag::Auth")]
impl MfaLoginApi {
    /// Complete a login with a second factor.
    ///
    /// Takes the `mfa_token` of a login answered `mfa_required` and the authenticator's
    /// current code (accepted within ±30 seconds, each code once) or a recovery code (each
    /// once). Answers the session's tokens and spends the MFA token. A wrong code is a 401
    /// `mfa_code_invalid` and counts toward the account lockout (403 `account_locked`) as a
    /// wrong password does; five spend the MFA token. An unknown, used or expired token,
    /// or another tenant's, is a 401 `mfa_token_invalid`.
    #[oai(path = "/v1/auth/mfa", method = "post", operation_id = "verify_mfa")]
    async fn verify_mfa(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<MfaLoginRequest>,
    ) -> ApiResult<Json<TokenPair>> {
        let client = client_info(request);
        let ip_key = throttle::key(Counter::LoginFailures, Some(tenant.0.id), client.ip);
        throttle::ensure_below(
            &state.redis,
            &ip_key,
            state.settings.auth.login_ip_max_failures,
        )
        .await?;
        let body = body.0;
        let token = parse_token(&body.mfa_token)?;
        let factor = factor_of(body.code.as_deref(), body.recovery_code.as_deref());
        let mut tx = tenant.begin(&state).await?;
        let challenge = open_challenge(&mut tx, &token, ChallengePurpose::Verify).await?;
        let user = challenge.user_id;
        let outcome = mfa_store::check_second_factor(
            &mut tx,
            &cipher(&state),
            tenant.0.id.0,
            user,
            factor,
            Utc::now(),
        )
        .await?;
        let left = match outcome {
            FactorOutcome::Refused => {
                let failure = CodeFailure {
                    token: &token,
                    user,
                    method: factor.method(),
                    client: &client,
                    ip_key: &ip_key,
                };
                return Err(failure.record(&state, tx).await?);
            }
            FactorOutcome::TotpAccepted => None,
            FactorOutcome::RecoveryCodeUsed { left } => Some(left),
        };
        if !mfa_store::spend_challenge(&mut tx, &token).await? {
            tx.rollback().await?;
            return Err(token_invalid());
        }
        if let Some(left) = left {
            audit::record(
                &mut tx,
                "mfa.recovery_code_used",
                Some(user),
                Some(user),
                None,
                &client,
                json!({ "recovery_codes_left": left }),
            )
            .await?;
            if let Some(record) = store::user_by_id(&mut tx, user).await? {
                send_notice(
                    &mut tx,
                    &record,
                    &format!(
                        "A recovery code was used to sign in to your account; {left} unused codes are left."
                    ),
                )
                .await?;
            }
        }
        let details = json!({ "mfa": factor.method() });
        let pair = open_session_in(&state, &mut tx, user, None, &client, details).await?;
        tx.commit().await?;
        Ok(Json(pair))
    }

    /// Start the enrollment a tenant requires, before the first login.
    ///
    /// Takes the `mfa_token` of a login answered `mfa_enrollment_required`; answers a new
    /// secret, its `otpauth://` URI and QR code (as `POST /v1/me/mfa/totp` does). Calling
    /// again replaces the pending secret. The token stays valid for the confirmation.
    #[oai(
        path = "/v1/auth/mfa/enroll",
        method = "post",
        operation_id = "enroll_mfa_at_login"
    )]
    async fn enroll_mfa_at_login(
        &self,
        state: Data<&AppState>,
        tenant: CurrentTenant,
        body: JsonBody<MfaEnrollRequest>,
    ) -> ApiResult<Json<TotpEnrollment>> {
        let token = parse_token(&body.0.mfa_token)?;
        let mut tx = tenant.begin(&state).await?;
        let challenge = open_challenge(&mut tx, &token, ChallengePurpose::Enroll).await?;
        let user = store::user_by_id(&mut tx, challenge.user_id)
            .await?
            .ok_or_else(token_invalid)?;
        let enrollment = start_enrollment(&state, &mut tx, &tenant.0, &user).await?;
        tx.commit().await?;
        Ok(Json(enrollment))
    }

    /// Confirm the enrollment a tenant requires, and log in.
    ///
    /// Takes the enrollment's `mfa_token` and the app's first code; turns two-factor
    /// authentication on (audited as `mfa.enabled`, with a security notice) and answers
    /// the recovery codes and the session's tokens, spending the token. A wrong code is a
    /// 401 `mfa_code_invalid` (five spend the token).
    #[oai(
        path = "/v1/auth/mfa/enroll/confirm",
        method = "post",
        operation_id = "confirm_mfa_at_login"
    )]
    async fn confirm_mfa_at_login(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<MfaEnrollConfirmRequest>,
    ) -> ApiResult<Json<EnrolledLogin>> {
        let client = client_info(request);
        let body = body.0;
        let token = parse_token(&body.mfa_token)?;
        let mut tx = tenant.begin(&state).await?;
        let challenge = open_challenge(&mut tx, &token, ChallengePurpose::Enroll).await?;
        let user = store::user_by_id(&mut tx, challenge.user_id)
            .await?
            .ok_or_else(token_invalid)?;
        let actor = Actor {
            session: None,
            client: &client,
        };
        let codes = match confirm_enrollment(&state, &mut tx, &user, &body.code, actor).await? {
            Confirmed::Yes(codes) => codes,
            Confirmed::WrongCode => {
                mfa_store::record_challenge_failure(&mut tx, &token, MFA_TOKEN_MAX_FAILURES)
                    .await?;
                tx.commit().await?;
                return Err(code_invalid());
            }
        };
        if !mfa_store::spend_challenge(&mut tx, &token).await? {
            tx.rollback().await?;
            return Err(token_invalid());
        }
        let details = json!({ "mfa": "totp", "enrolled": true });
        let tokens = open_session_in(&state, &mut tx, user.id, None, &client, details).await?;
        tx.commit().await?;
        Ok(Json(EnrolledLogin {
            recovery_codes: codes,
            tokens,
        }))
    }
}

/// A stronger hash of the password a login just verified, to store in its place.
pub(crate) struct Rehash<'a> {
    /// The hash the password was verified against.
    pub previous: &'a str,
    /// Its replacement, made with the current parameters.
    pub new: &'a str,
}

/// After a correct password: the MFA token answer when the user has two-factor
/// authentication on, or must enroll by the tenant's policy; `None` when the login may
/// open its session at once (which then stores `rehash` itself). With a second step,
/// `rehash` is stored here: the password was verified, and the session opened by the
/// second step knows no password.
pub(crate) async fn second_step(
    state: &AppState,
    tenant: &CurrentTenant,
    user: Uuid,
    rehash: Option<Rehash<'_>>,
    client: &ClientInfo,
) -> ApiResult<Option<LoginOutcome>> {
    let mut tx = tenant.begin(state).await?;
    let purpose = if mfa_store::has_confirmed_totp(&mut tx, user).await? {
        ChallengePurpose::Verify
    } else if mfa_store::required_by_policy(&mut tx, user).await? {
        ChallengePurpose::Enroll
    } else {
        tx.commit().await?;
        return Ok(None);
    };
    if let Some(rehash) = rehash {
        store::store_rehashed_password(&mut tx, user, rehash.previous, rehash.new).await?;
    }
    let outcome = challenge_in(&mut tx, user, purpose, client).await?;
    tx.commit().await?;
    Ok(Some(outcome))
}

/// The enrollment token answer, in `tx`, when the tenant's policy requires two-factor
/// authentication of one of `user`'s roles and they have none: what a login answers then,
/// for the paths that create a user and would otherwise log them in directly (accepting
/// an invitation). `None` when no enrollment is required.
pub(crate) async fn enrollment_required_in(
    tx: &mut TenantTx,
    user: Uuid,
    client: &ClientInfo,
) -> ApiResult<Option<LoginOutcome>> {
    if mfa_store::has_confirmed_totp(tx, user).await?
        || !mfa_store::required_by_policy(tx, user).await?
    {
        return Ok(None);
    }
    let outcome = challenge_in(tx, user, ChallengePurpose::Enroll, client).await?;
    Ok(Some(outcome))
}

/// Issues (and audits) an MFA token for `purpose`, in `tx`: the answer that carries it.
async fn challenge_in(
    tx: &mut TenantTx,
    user: Uuid,
    purpose: ChallengePurpose,
    client: &ClientInfo,
) -> ApiResult<LoginOutcome> {
    let (token, _) = mfa_store::issue_challenge(tx, user, purpose, MFA_TOKEN_TTL).await?;
    audit::record(
        tx,
        "login.mfa_challenged",
        None,
        Some(user),
        None,
        client,
        json!({ "purpose": purpose.as_str() }),
    )
    .await?;
    let mfa_token = token.encode();
    let expires_in = MFA_TOKEN_TTL.as_secs();
    Ok(match purpose {
        ChallengePurpose::Verify => LoginOutcome::MfaRequired(MfaRequired {
            mfa_token,
            expires_in,
            methods: vec!["totp".to_owned(), "recovery_code".to_owned()],
        }),
        ChallengePurpose::Enroll => LoginOutcome::MfaEnrollmentRequired(MfaEnrollmentRequired {
            mfa_token,
            expires_in,
        }),
    })
}

fn parse_token(presented: &str) -> ApiResult<OpaqueToken> {
    OpaqueToken::parse(presented).ok_or_else(token_invalid)
}

/// The live token for `purpose`, locked in `tx`; its user must still be active and not
/// locked (a lock set by wrong codes refuses the step as it refuses the password).
async fn open_challenge(
    tx: &mut TenantTx,
    token: &OpaqueToken,
    purpose: ChallengePurpose,
) -> ApiResult<Challenge> {
    let challenge = mfa_store::live_challenge(tx, token, purpose)
        .await?
        .ok_or_else(token_invalid)?;
    let state = mfa_store::factor_state(tx, challenge.user_id)
        .await?
        .ok_or_else(token_invalid)?;
    if let Some(until) = state.locked_until.filter(|until| *until > Utc::now()) {
        return Err(account_locked(until));
    }
    ensure_may_log_in(state.status)?;
    Ok(challenge)
}

/// A wrong second factor presented with an MFA token.
struct CodeFailure<'a> {
    token: &'a OpaqueToken,
    user: Uuid,
    method: &'static str,
    client: &'a ClientInfo,
    ip_key: &'a str,
}

impl CodeFailure<'_> {
    /// Counts the failure on the token (spending it at the limit) and on the account
    /// (locking it past the policy's limit), audits it as `login.failed`, counts it
    /// against the address, and gives the answer: 401 `mfa_code_invalid`, or 403
    /// `account_locked` when this failure locked the account.
    async fn record(self, state: &AppState, mut tx: TenantTx) -> ApiResult<ApiError> {
        let settings = &state.settings.auth;
        mfa_store::record_challenge_failure(&mut tx, self.token, MFA_TOKEN_MAX_FAILURES).await?;
        let locked =
            store::record_login_failure(&mut tx, self.user, lockout_policy(settings)).await?;
        let details = json!({ "reason": "wrong_mfa_code", "method": self.method });
        audit::record(
            &mut tx,
            "login.failed",
            None,
            Some(self.user),
            None,
            self.client,
            details,
        )
        .await?;
        if let Some(until) = locked {
            let details = json!({ "locked_until": until });
            audit::record(
                &mut tx,
                "login.locked",
                None,
                Some(self.user),
                None,
                self.client,
                details,
            )
            .await?;
        }
        tx.commit().await?;
        // Counted after the fact; a Redis failure here only loses one count.
        let _ = throttle::hit(
            &state.redis,
            self.ip_key,
            settings.login_ip_max_failures,
            settings.login_failure_window,
        )
        .await;
        Ok(match locked {
            Some(until) => account_locked(until),
            None => code_invalid(),
        })
    }
}

fn token_invalid() -> ApiError {
    ApiError::new(
        ErrorCode::MfaTokenInvalid,
        "This MFA token is unknown, used or expired; log in again.",
    )
}

fn code_invalid() -> ApiError {
    ApiError::new(
        ErrorCode::MfaCodeInvalid,
        "The code is wrong, already used, or outside its time window.",
    )
}
