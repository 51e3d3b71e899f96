//! The one error type every handler returns, and its RFC 9457 `application/problem+json`
//! rendering.
//!
//! Stable error codes live in a single table ([`ErrorCode`], written with the
//! `error_codes!` macro): status, code and title side by side, so a code can never drift
//! from its status. Errors raised by the framework itself (unknown route, bad JSON, wrong
//! content type, …) are translated into the same shape by [`ApiError::from_poem`], which
//! the request pipeline applies to every error.

use std::fmt;

use poem::{
    IntoResponse, Response,
    error::{
        MethodNotAllowedError, NotFoundError, ParsePathError, ReadBodyError, ResponseError,
        SizedLimitError,
    },
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse, Enum, Object,
    error::{ContentTypeError, ParseMultipartError, ParseParamError, ParseRequestPayloadError},
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

macro_rules! error_codes {
    ($($variant:ident => ($status:ident, $title:literal, $doc:literal)),* $(,)?) => {
        /// Stable, machine-readable error codes. Clients match on these; never rename one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize)]
        #[oai(rename_all = "snake_case")]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $(
                #[doc = $doc]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The HTTP status this code is always sent with.
            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// Short, human-readable summary (the problem's `title`).
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }

            /// What the code means and what to do about it.
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }
        }
    };
}

error_codes! {
    BadRequest => (BAD_REQUEST, "Bad request", "The request could not be understood."),
    MalformedJson => (BAD_REQUEST, "Malformed JSON", "The body is not syntactically valid JSON; `detail` says where."),
    InvalidParameter => (BAD_REQUEST, "Invalid parameter", "A path, query or header parameter could not be parsed; `detail` names it."),
    TenantRequired => (BAD_REQUEST, "Tenant required", "The operation is tenant-scoped but the request names no tenant: use the tenant's subdomain or the `X-Tenant` header."),
    TenantMismatch => (BAD_REQUEST, "Tenant mismatch", "The subdomain and the `X-Tenant` header name different tenants."),
    InvalidSignature => (BAD_REQUEST, "Invalid signature", "The webhook's `Stripe-Signature` is missing, malformed, too old or too far in the future, or matches none of the configured secrets."),
    LinkInvalid => (BAD_REQUEST, "Link invalid", "The verification or password-reset token is unknown, already used or expired; ask for a new email."),
    Unauthorized => (UNAUTHORIZED, "Unauthorized", "Credentials are missing, malformed or invalid."),
    InvalidCredentials => (UNAUTHORIZED, "Invalid credentials", "The email or the password is wrong."),
    InvalidToken => (UNAUTHORIZED, "Invalid token", "The access token, refresh token or API key is malformed, unknown, revoked, or its session has ended (or the key's creator is blocked); log in again, or use another key."),
    ApiKeyExpired => (UNAUTHORIZED, "API key expired", "The API key is past its `expires_at`; create a new one with `POST /v1/api-keys`."),
    TokenExpired => (UNAUTHORIZED, "Token expired", "The access token has expired; get a new one from `POST /v1/auth/refresh`."),
    RefreshTokenReused => (UNAUTHORIZED, "Refresh token reused", "A refresh token was used again after it had been rotated: the whole session has been revoked as a precaution; log in again."),
    TicketInvalid => (UNAUTHORIZED, "Ticket invalid", "The realtime ticket is malformed, unknown, already used or expired (tickets are single-use and valid 30 seconds); get a new one from `POST /v1/realtime/tickets`."),
    Forbidden => (FORBIDDEN, "Forbidden", "The credentials are valid but do not allow this operation."),
    WrongTenant => (FORBIDDEN, "Wrong tenant", "The access token or API key was issued by another tenant than the one this request addresses."),
    ApiKeyNotAllowed => (FORBIDDEN, "Not for API keys", "Only a person signed in with an access token may do this (their own account, sessions, password, MFA, and managing API keys); an API key cannot, whatever it holds."),
    EmailNotVerified => (FORBIDDEN, "Email not verified", "The account's email address has not been verified yet; follow the link in the verification email (or ask for a new one with `POST /v1/auth/resend-verification`)."),
    AccountLocked => (FORBIDDEN, "Account locked", "Too many failed logins: the account is locked until `locked_until` (also in `Retry-After`)."),
    AccountDisabled => (FORBIDDEN, "Account disabled", "The account has been deactivated or banned by an administrator."),
    TenantSuspended => (FORBIDDEN, "Tenant suspended", "The tenant exists but is suspended; the platform operator can resume it."),
    NotFound => (NOT_FOUND, "Not found", "No resource exists at this path."),
    TenantNotFound => (NOT_FOUND, "Tenant not found", "No active or suspended tenant has this slug or id."),
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "Method not allowed", "The path exists but not with this method; the `Allow` header lists the ones that do."),
    Conflict => (CONFLICT, "Conflict", "The request conflicts with the current state of the resource."),
    SlugTaken => (CONFLICT, "Slug taken", "Another tenant already uses this slug; choose another."),
    EmailTaken => (CONFLICT, "Email taken", "Another user of this tenant already has this email address (compared by its normalized form)."),
    RoleNameTaken => (CONFLICT, "Role name taken", "Another role of this tenant has this name (names are compared case-insensitively)."),
    SystemRoleImmutable => (CONFLICT, "System role", "System roles (`owner`, `admin`, `member`, `viewer`) cannot be renamed, changed or deleted; create a custom role instead."),
    RoleInUse => (CONFLICT, "Role in use", "Users hold the role or other roles inherit from it; reassign them first."),
    ApiKeyLimitReached => (CONFLICT, "API key limit reached", "The tenant has as many live API keys as it may have (100); revoke one first."),
    RoleLimitReached => (CONFLICT, "Role limit reached", "The tenant has as many roles as it may have; delete one first."),
    SkuTaken => (CONFLICT, "SKU taken", "Another live product of this tenant has this SKU (compared case-insensitively)."),
    InsufficientStock => (CONFLICT, "Insufficient stock", "The adjustment would take the stock below zero; `available` says how many units there are."),
    PreconditionFailed => (PRECONDITION_FAILED, "Precondition failed", "`If-Match` names a version that is no longer current; fetch the resource again (`current_version`) and retry."),
    LastOwner => (CONFLICT, "Last owner", "The change would leave the tenant without an active owner; make another user owner first."),
    PayloadTooLarge => (PAYLOAD_TOO_LARGE, "Payload too large", "The body is larger than this endpoint accepts."),
    UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "Unsupported media type", "The `Content-Type` is missing or not one this endpoint accepts; or an uploaded file's type, read from its bytes, is refused (SVG, HTML, a type the plan does not allow) or contradicts its declared type or extension."),
    PlanLimitReached => (PAYMENT_REQUIRED, "Plan limit reached", "The tenant's plan does not allow more of this (`limit` names it: `products`, `seats`, `realtime_connections`; `allowed` and `used` say how many); move to a larger plan."),
    QuotaExceeded => (PAYMENT_REQUIRED, "Storage quota exceeded", "Storing this file would pass the storage the tenant's plan allows (`used` and `limit`, in bytes); delete files or move to a larger plan."),
    ImageTooLarge => (UNPROCESSABLE_ENTITY, "Image too large", "The image declares more pixels than Canopy decodes (`max_width` × `max_height`)."),
    NoBillingAccount => (CONFLICT, "No billing account", "The tenant has no Stripe customer yet; start a subscription with `POST /v1/billing/checkout` first."),
    FileNotReady => (CONFLICT, "File not ready", "The file's thumbnails are still being made; retry in a moment."),
    ValidationFailed => (UNPROCESSABLE_ENTITY, "Validation failed", "The body is well-formed JSON but some fields are invalid; `errors` lists each one."),
    TooManyConnections => (TOO_MANY_REQUESTS, "Too many connections", "The user has as many realtime connections open on this instance as allowed (`allowed`, `CANOPY_REALTIME_MAX_PER_USER`); close one first."),
    RateLimited => (TOO_MANY_REQUESTS, "Too many requests", "Slow down; `Retry-After` says when to try again."),
    InternalError => (INTERNAL_SERVER_ERROR, "Internal server error", "Something went wrong on our side. Quote `request_id` when reporting it."),
    RequestTimeout => (SERVICE_UNAVAILABLE, "Request timed out", "The request took longer than the server allows and was abandoned."),
    NotReady => (SERVICE_UNAVAILABLE, "Not ready", "A dependency of the service is unavailable; `checks` says which."),
    DependencyUnavailable => (SERVICE_UNAVAILABLE, "Temporarily unavailable", "A service this operation cannot safely do without is unreachable; retry after `Retry-After` seconds."),
    GoingAway => (SERVICE_UNAVAILABLE, "Going away", "This instance is shutting down and takes no new realtime connections; connect again (to another instance)."),
    Overloaded => (SERVICE_UNAVAILABLE, "Overloaded", "Too many requests of this kind are in progress; retry after `Retry-After` seconds."),
    InvitationInvalid => (BAD_REQUEST, "Invitation invalid", "The invitation link is unknown, already used, replaced by a newer one, revoked or expired; ask whoever invited you for a new invitation."),
    MfaTokenInvalid => (UNAUTHORIZED, "MFA token invalid", "The MFA token is unknown, already used, expired, spent by too many wrong codes, meant for another step (a login token for enrollment or the reverse), or issued by another tenant; log in again."),
    MfaCodeInvalid => (UNAUTHORIZED, "MFA code invalid", "The authenticator code or recovery code is wrong, already used, or outside the ±30-second window. Wrong codes count toward the account lockout like wrong passwords."),
    MfaAlreadyEnabled => (CONFLICT, "MFA already enabled", "Two-factor authentication is already on for this account; disable it (`DELETE /v1/me/mfa/totp`) before enrolling again."),
    MfaNotEnabled => (CONFLICT, "MFA not enabled", "Two-factor authentication is not on for this account (or no enrollment waits for confirmation); start with `POST /v1/me/mfa/totp`."),
    AlreadyMember => (CONFLICT, "Already a member", "A user of this tenant already has this email address: there is nobody to invite."),
    UnsubscribeTokenInvalid => (BAD_REQUEST, "Unsubscribe token invalid", "The unsubscribe token is missing, malformed or not signed by this service; use the link of the message as it arrived."),
    PasswordResetRequired => (FORBIDDEN, "Password reset required", "The account's sessions were ended for a security reason (status `security_issue`): reset the password (`POST /v1/auth/forgot-password`, then `POST /v1/auth/reset-password`) to log in again."),
    EmailChangeInvalid => (BAD_REQUEST, "Email change link invalid", "The email change link is unknown, already used, replaced by a newer request, expired, or belongs to another user than the one signed in; ask for a new change."),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serde name is the stable code.
        let value = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(value.as_str().unwrap_or_default())
    }
}

macro_rules! field_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal,)*) => {
        /// Why a field of a request is invalid: the `code` of each entry of a 422's
        /// `errors`. The one list of these codes: clients match on them, so never rename one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize)]
        pub enum FieldCode {
            $(
                $(#[doc = $doc])+
                #[oai(rename = $code)]
                #[serde(rename = $code)]
                $variant,
            )*
        }

        impl FieldCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [FieldCode] = &[$(FieldCode::$variant),*];

            /// The code as sent on the wire (snake_case).
            pub const fn as_str(self) -> &'static str {
                match self { $(FieldCode::$variant => $code,)* }
            }

            /// What the code means (its doc comment).
            pub fn description(self) -> &'static str {
                match self { $(FieldCode::$variant => concat!($($doc),+).trim_ascii(),)* }
            }

            /// The code sent as `code`, if it is one.
            pub fn from_wire(code: &str) -> Option<Self> {
                match code { $($code => Some(FieldCode::$variant),)* _ => None }
            }
        }
    };
}

field_codes! {
    /// A required field is missing (or a setting needs a value it lacks).
    Required = "required",
    /// The body has a field the operation does not accept.
    UnknownField = "unknown_field",
    /// The field has the wrong JSON type (a string where a number belongs, …).
    InvalidType = "invalid_type",
    /// The field's JSON value cannot be used (an unknown enum value, a malformed id, a string
    /// holding NUL, …).
    InvalidValue = "invalid_value",
    /// The value does not have the required form (slug, email address, SKU, currency, plan,
    /// domain, …); the message says which.
    Invalid = "invalid",
    /// Text (or a list) outside its length bounds, or holding control characters.
    Length = "length",
    /// A password shorter than the policy allows.
    TooShort = "too_short",
    /// More characters or items than allowed.
    TooLong = "too_long",
    /// A password on the list of common or breached passwords.
    Common = "common",
    /// Nothing to do (a change that sets no field), or an empty file.
    Empty = "empty",
    /// The same value twice where it must be unique within the request.
    Duplicate = "duplicate",
    /// A file whose content cannot be decoded as the type it claims.
    Corrupt = "corrupt",
    /// An id that is not a ready image file of this tenant.
    NotAReadyImage = "not_a_ready_image",
    /// A number outside its allowed range.
    OutOfRange = "out_of_range",
    /// A compare-at price below the price.
    BelowPrice = "below_price",
    /// A value larger than allowed (too many keys, too many bytes).
    TooLarge = "too_large",
    /// An attribute key that is empty, too long or holds control characters.
    InvalidKey = "invalid_key",
    /// An id that names nothing of this tenant.
    NotFound = "not_found",
    /// A role that would inherit from itself.
    Cycle = "cycle",
    /// A chain of parent roles longer than allowed.
    TooDeep = "too_deep",
    /// A name that is not a permission of the catalog.
    UnknownPermission = "unknown_permission",
    /// A password that is not the current one.
    Incorrect = "incorrect",
    /// A value already used by another record of the tenant.
    Taken = "taken",
    /// A role that allows more than the operation permits.
    TooPowerful = "too_powerful",
    /// An email template that does not compile or render with its message's variables;
    /// the message is the engine's, with the line.
    TemplateError = "template_error",
}

impl fmt::Display for FieldCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FieldCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One invalid field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Object, Serialize)]
pub struct FieldError {
    /// JSON path of the field (`slug`, `items[3].price`); empty for the body as a whole.
    pub field: String,
    /// Stable reason (`required`, `too_short`, `invalid_type`, `unknown_field`, …).
    pub code: FieldCode,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, code: FieldCode, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document, as sent on the wire.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Problem")]
pub struct ProblemBody {
    /// URI reference identifying the problem type; resolves to its documentation.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Identifier of the request (also in the `X-Request-Id` header).
    pub request_id: String,
    /// Per-field problems, for `validation_failed`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Extra members specific to the code (for example `checks` for `not_ready`).
    #[oai(skip)]
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// The error every handler returns. Render it with [`ApiError::into_problem_response`].
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    detail: String,
    errors: Vec<FieldError>,
    // Boxed: keeps `Result<_, ApiError>` small on the happy path.
    extensions: Box<serde_json::Map<String, serde_json::Value>>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    source: Option<anyhow::Error>,
}

impl ApiError {
    /// An error with the given code and explanation.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            extensions: Box::default(),
            headers: Vec::new(),
            source: None,
        }
    }

    /// A 500 whose cause is logged (once, when rendered) and never shown to the client;
    /// or, when that cause is a database that cannot be used right now
    /// ([`tenancy::unavailable_cause`]: unreachable, shutting down, no connection within the
    /// pool's wait), a 503 `dependency_unavailable` with `Retry-After`, its cause logged too.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let source = source.into();
        if tenancy::unavailable_cause(&*source).is_some() {
            return Self::database_unavailable(source);
        }
        let mut err = Self::new(
            ErrorCode::InternalError,
            "An unexpected error occurred. Quote the request id if you report it.",
        );
        err.source = Some(source);
        err
    }

    /// A 503 `dependency_unavailable` with `Retry-After` for a database that cannot be used
    /// right now, its cause logged when rendered (what [`Self::internal`] answers for one).
    pub fn database_unavailable(source: impl Into<anyhow::Error>) -> Self {
        let mut err = Self::retry_after(
            ErrorCode::DependencyUnavailable,
            "The database is unreachable right now; retry shortly.",
            DATABASE_RETRY_AFTER_SECS,
        );
        err.source = Some(source.into());
        err
    }

    /// A 422 listing every invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("`{}`: {}", errors[0].field, errors[0].message),
            n => format!("{n} fields are invalid."),
        };
        let mut err = Self::new(ErrorCode::ValidationFailed, detail);
        err.errors = errors;
        err
    }

    /// Adds a member to the problem document.
    pub fn with_extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    /// Lists per-field (or per-item) problems in `errors`.
    pub fn with_field_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// Adds a response header (e.g. `Allow`, `Retry-After`).
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A 429 or 503 telling the client to come back in `seconds` (`Retry-After`).
    pub fn retry_after(code: ErrorCode, detail: impl Into<String>, seconds: u64) -> Self {
        Self::new(code, detail).with_header(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// Per-field errors, if any.
    pub fn field_errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Translates any error that reached the edge of the app into an [`ApiError`]: ours pass
    /// through; the framework's own are mapped to their stable code.
    pub fn from_poem(err: poem::Error) -> Self {
        let status = err.status();
        if err.is::<ApiError>() {
            return match err.downcast::<ApiError>() {
                Ok(api) => api,
                Err(other) => ApiError::internal(anyhow::anyhow!("{other}")),
            };
        }
        if err.is::<NotFoundError>() {
            return Self::new(ErrorCode::NotFound, "No resource exists at this path.");
        }
        if err.is::<MethodNotAllowedError>() {
            return Self::new(
                ErrorCode::MethodNotAllowed,
                "This path does not support this method.",
            );
        }
        if let Some(e) = err.downcast_ref::<ContentTypeError>() {
            let detail = match e {
                ContentTypeError::NotSupported { content_type } => {
                    format!(
                        "Content-Type `{content_type}` is not accepted here; send `application/json`."
                    )
                }
                ContentTypeError::ExpectContentType => {
                    "A `Content-Type` header is required.".to_owned()
                }
            };
            return Self::new(ErrorCode::UnsupportedMediaType, detail);
        }
        if let Some(e) = err.downcast_ref::<ParseParamError>() {
            return Self::new(
                ErrorCode::InvalidParameter,
                format!("Parameter `{}`: {}", e.name, e.reason),
            );
        }
        if let Some(e) = err.downcast_ref::<poem_openapi::error::ParsePathError>() {
            return Self::new(
                ErrorCode::InvalidParameter,
                format!("Path segment `{}`: {}", e.name, e.reason),
            );
        }
        if err.is::<ParsePathError>() {
            return Self::new(ErrorCode::InvalidParameter, "The path could not be parsed.");
        }
        if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
            return Self::new(ErrorCode::BadRequest, e.reason.clone());
        }
        if let Some(e) = err.downcast_ref::<ParseMultipartError>() {
            return Self::new(ErrorCode::BadRequest, e.reason.clone());
        }
        if err.is::<SizedLimitError>()
            || matches!(
                err.downcast_ref::<ReadBodyError>(),
                Some(ReadBodyError::PayloadTooLarge)
            )
        {
            return Self::new(
                ErrorCode::PayloadTooLarge,
                "The request body is larger than this endpoint accepts.",
            );
        }
        if let Some(ReadBodyError::Io(io)) = err.downcast_ref::<ReadBodyError>() {
            if let Some(exceeded) = find_in_chain::<BodyLimitExceeded>(io) {
                return Self::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "The request body is larger than the limit of {} bytes.",
                        exceeded.limit
                    ),
                );
            }
            return Self::new(ErrorCode::BadRequest, "The request body could not be read.");
        }
        match status {
            StatusCode::NOT_FOUND => {
                Self::new(ErrorCode::NotFound, "No resource exists at this path.")
            }
            StatusCode::METHOD_NOT_ALLOWED => Self::new(
                ErrorCode::MethodNotAllowed,
                "This path does not support this method.",
            ),
            StatusCode::UNAUTHORIZED => {
                Self::new(ErrorCode::Unauthorized, "Authentication is required.")
            }
            StatusCode::FORBIDDEN => Self::new(ErrorCode::Forbidden, err.to_string()),
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(ErrorCode::PayloadTooLarge, "The request body is too large.")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::new(ErrorCode::UnsupportedMediaType, err.to_string())
            }
            s if s.is_client_error() => Self::new(ErrorCode::BadRequest, err.to_string()),
            _ => Self::internal(anyhow::anyhow!("{err}")),
        }
    }

    /// Renders the problem document for the request `request_id`, logging a 5xx cause once.
    pub fn into_problem_response(self, request_id: &str) -> Response {
        let status = self.code.status();
        if let Some(source) = &self.source {
            tracing::error!(code = %self.code, error = ?source, "request failed");
        } else if status.is_server_error() {
            tracing::error!(code = %self.code, detail = %self.detail, "request failed");
        }
        let body = ProblemBody {
            type_: format!("/problems/{}", self.code),
            title: self.code.title().to_owned(),
            status: status.as_u16(),
            detail: self.detail,
            code: self.code,
            request_id: request_id.to_owned(),
            errors: (!self.errors.is_empty()).then_some(self.errors),
            extensions: *self.extensions,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::builder()
            .status(status)
            .content_type(PROBLEM_JSON)
            .body(json);
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        if self.code == ErrorCode::Unauthorized {
            // RFC 9110: a 401 says which scheme to use.
            response
                .headers_mut()
                .entry(header::WWW_AUTHENTICATE)
                .or_insert(HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Finds a `T` among an error's causes, looking inside I/O errors too (an `io::Error`'s
/// `source()` skips the error it wraps, and body streams wrap theirs more than once).
fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if let Some(found) = wrapped.and_then(|inner| find_in_chain::<T>(inner)) {
            return Some(found);
        }
        current = e.source();
    }
    None
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e.as_ref() as _)
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.code.status()
    }

    fn as_response(&self) -> Response {
        // Normally unused: the pipeline renders errors with the request id. Kept correct
        // for errors rendered outside it.
        ApiError {
            code: self.code,
            detail: self.detail.clone(),
            errors: self.errors.clone(),
            extensions: self.extensions.clone(),
            headers: self.headers.clone(),
            source: None,
        }
        .into_problem_response("")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_problem_response("")
    }
}

/// In the OpenAPI document every operation gets a `default` response: any error is a
/// problem document.
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Any error: an RFC 9457 problem document with a stable `code`.",
                status: None,
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_JSON,
                    schema: ProblemBody::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        ProblemBody::register(registry);
    }
}

impl From<tenancy::TenancyError> for ApiError {
    fn from(err: tenancy::TenancyError) -> Self {
        use tenancy::TenancyError as E;
        match err {
            E::SlugTaken(slug) => {
                ApiError::new(ErrorCode::SlugTaken, format!("The slug `{slug}` is taken."))
            }
            E::TenantNotFound => ApiError::new(ErrorCode::TenantNotFound, "No tenant by that id."),
            E::InvalidSlug(reason) => ApiError::validation(vec![FieldError::new(
                "slug",
                FieldCode::Invalid,
                format!("slug {reason}"),
            )]),
            E::InvalidName => ApiError::validation(vec![FieldError::new(
                "name",
                FieldCode::Length,
                "must be 1 to 200 characters",
            )]),
            e @ E::InvalidTransition { .. } => ApiError::new(
                ErrorCode::Conflict,
                format!("{}.", capitalize(&e.to_string())),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::internal(err)
    }
}

impl From<identity::StoreError> for ApiError {
    fn from(err: identity::StoreError) -> Self {
        match err {
            identity::StoreError::EmailTaken => ApiError::new(
                ErrorCode::EmailTaken,
                "Another user of this tenant has this email address.",
            ),
            // Also a 500: the stored secret and the configured key disagree.
            other => ApiError::internal(other),
        }
    }
}

impl From<identity::HashError> for ApiError {
    fn from(err: identity::HashError) -> Self {
        match err {
            identity::HashError::Busy => ApiError::retry_after(
                ErrorCode::Overloaded,
                "Too many logins are being checked right now; retry in a moment.",
                1,
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<identity::KeyError> for ApiError {
    fn from(err: identity::KeyError) -> Self {
        ApiError::internal(err)
    }
}

impl From<admission::AdmissionError> for ApiError {
    fn from(err: admission::AdmissionError) -> Self {
        use admission::AdmissionError as E;
        match err {
            E::SessionUncheckable => ApiError::retry_after(
                ErrorCode::DependencyUnavailable,
                "The session cannot be checked right now; retry shortly.",
                5,
            ),
            E::Revoked => ApiError::new(
                ErrorCode::InvalidToken,
                "This session has ended or the account is blocked; log in again.",
            ),
            E::ThrottleUnavailable => ApiError::retry_after(
                ErrorCode::DependencyUnavailable,
                "This operation is temporarily unavailable; retry shortly.",
                5,
            ),
            E::Throttled { retry_after } => ApiError::retry_after(
                ErrorCode::RateLimited,
                "Too many attempts from this address; retry later.",
                retry_after,
            ),
            E::TenantNotFound => {
                ApiError::new(ErrorCode::TenantNotFound, "No tenant by that name.")
            }
            E::Tenancy(err) => err.into(),
            E::Database(err) => err.into(),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Marker carried by the I/O error a body stream yields once it passes the limit, so the
/// error mapper answers 413 rather than 400.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyLimitExceeded {
    /// The limit that was crossed.
    pub limit: u64,
}

/// The `Retry-After` of a 503 for a database that cannot be used right now.
const DATABASE_RETRY_AFTER_SECS: u64 = 2;

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_database_out_of_reach_is_a_503_through_every_wrapper() {
        let gone = || sqlx::Error::PoolTimedOut;
        let answers = [
            ApiError::from(gone()),
            identity::StoreError::Database(gone()).into(),
            identity::KeyError::Database(gone()).into(),
            admission::AdmissionError::Database(gone()).into(),
            tenancy::TenancyError::Database(gone()).into(),
            ApiError::internal(jobs::JobError::Database(gone())),
            ApiError::internal(billing::processing::AcceptError::Store(gone())),
            ApiError::internal(billing::limits::LimitError::Database(gone())),
            ApiError::internal(rbac::RoleError::Database(gone())),
            ApiError::internal(files::FileError::Database(gone())),
            ApiError::internal(anyhow::Error::from(identity::StoreError::Database(gone()))),
        ];
        for answer in answers {
            assert_eq!(answer.code(), ErrorCode::DependencyUnavailable, "{answer}");
        }
        // A query that failed is still the server's fault.
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).code(),
            ErrorCode::InternalError
        );
        let protocol = identity::StoreError::Database(sqlx::Error::Protocol("bad".into()));
        assert_eq!(ApiError::from(protocol).code(), ErrorCode::InternalError);
    }

    #[test]
    fn codes_are_unique_snake_case_and_match_their_status_class() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let name = code.to_string();
            assert!(seen.insert(name.clone()), "duplicate code {name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        assert_eq!(ErrorCode::ValidationFailed.to_string(), "validation_failed");
    }

    #[test]
    fn field_codes_are_listed_once_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in FieldCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(serde_json::to_value(code).expect("json"), code.as_str());
            assert_eq!(FieldCode::from_wire(code.as_str()), Some(*code));
            assert!(!code.description().is_empty());
        }
    }

    #[test]
    fn readme_lists_every_field_code() {
        let readme = include_str!("../../README.md");
        for code in FieldCode::ALL {
            let row = format!("| `{code}` | {} |", code.description().replace('\n', " "));
            assert!(readme.contains(&row), "README.md's field codes lack {row}");
        }
    }

    #[test]
    fn a_taken_email_has_its_own_code() {
        let err = ApiError::from(identity::StoreError::EmailTaken);
        assert_eq!(err.code(), ErrorCode::EmailTaken);
        assert_eq!(err.code().to_string(), "email_taken");
        assert_eq!(err.code().status(), StatusCode::CONFLICT);
    }

    #[test]
    fn validation_detail_names_a_single_field() {
        let err = ApiError::validation(vec![FieldError::new(
            "slug",
            FieldCode::TooShort,
            "must be at least 3 characters",
        )]);
        assert_eq!(
            err.to_string(),
            "validation_failed: `slug`: must be at least 3 characters"
        );
    }
}
