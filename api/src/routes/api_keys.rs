//! The tenant's API keys (`/v1/api-keys`): service accounts' bearer credentials.
//!
//! A key is made by a person holding `api_keys:manage`, with permissions they hold
//! themselves (403 `forbidden` naming the others), never `api_keys:manage` (a key cannot
//! make keys). Its secret is in the creation's answer only; the tenant keeps its SHA-256
//! (`identity::api_keys`). Revoking one announces it on the revocation list, so every
//! instance refuses it on its next request. Creation and revocation are audited.

use chrono::{DateTime, Duration, Utc};
use identity::api_keys::{
    self as store, ApiKey, ApiKeyError, KeyToken, MAX_KEYS_PER_TENANT, MAX_LIFETIME_DAYS, NewKey,
};
use poem::{Request, web::Data};
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use rbac::{Permission, PermissionSet, catalog::NOT_FOR_API_KEYS};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{ApiTag, audit, guards::ensure_holds},
};

/// API keys endpoints.
pub struct ApiKeysApi;

/// An API key (never with its secret).
#[derive(Debug, Object)]
pub struct ApiKeyView {
    /// Key id.
    pub id: Uuid,
    /// What it is for.
    pub name: String,
    /// What it may do (as far as its creator still holds it).
    pub permissions: Vec<String>,
    /// The user who made it; the key acts for them.
    pub created_by: Uuid,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it stops working (none: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client address of the last use.
    pub last_used_ip: Option<String>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            permissions: k.permissions,
            created_by: k.created_by,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            last_used_ip: k.last_used_ip,
        }
    }
}

/// A key just made, with its secret: the only time it is shown.
#[derive(Debug, Object)]
pub struct CreatedApiKeyView {
    /// The key: send it as `Authorization: Bearer <key>`. Shown once; store it now.
    pub key: String,
    /// The key's record.
    pub api_key: ApiKeyView,
}

/// The tenant's live API keys.
#[derive(Debug, Object)]
pub struct ApiKeyList {
    /// Newest first (at most 100).
    pub items: Vec<ApiKeyView>,
}

/// A key to make.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What it is for: 1 to 100 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: String,
    /// Its permissions, from `GET /v1/permissions`, each one you hold yourself; not
    /// `api_keys:manage`. At least one.
    #[oai(validator(min_items = 1, max_items = 14))]
    pub permissions: Vec<String>,
    /// When it stops working: in the future, at most 366 days ahead. Absent: never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

// The schema's `maxItems` of `permissions` (attributes take literals only).
const _: () = assert!(
    Permission::ALL.len() == 14,
    "update maxItems of `permissions`"
);

impl Validate for CreateApiKey {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                FieldCode::Length,
                "must be 1 to 100 characters, without control characters",
            ));
        }
        check_permissions(&mut errors, &self.permissions);
        if let Some(at) = self.expires_at {
            let now = Utc::now();
            if at <= now || at > now + Duration::days(MAX_LIFETIME_DAYS) {
                errors.push(FieldError::new(
                    "expires_at",
                    FieldCode::OutOfRange,
                    format!("must be in the future and at most {MAX_LIFETIME_DAYS} days ahead"),
                ));
            }
        }
        all_valid(errors)
    }
}

fn check_permissions(errors: &mut Vec<FieldError>, names: &[String]) {
    if names.is_empty() || names.len() > Permission::ALL.len() {
        errors.push(FieldError::new(
            "permissions",
            FieldCode::Length,
            format!("1 to {} permissions", Permission::ALL.len()),
        ));
        return;
    }
    let mut seen = PermissionSet::EMPTY;
    for (i, name) in names.iter().enumerate() {
        let field = format!("permissions[{i}]");
        match name.parse::<Permission>() {
            Err(_) => errors.push(FieldError::new(
                field,
                FieldCode::UnknownPermission,
                format!("`{name}` is not a permission; see GET /v1/permissions"),
            )),
            Ok(p) if NOT_FOR_API_KEYS.contains(p) => errors.push(FieldError::new(
                field,
                FieldCode::TooPowerful,
                format!("an API key cannot hold `{p}`"),
            )),
            Ok(p) if seen.contains(p) => {
                errors.push(FieldError::new(field, FieldCode::Duplicate, "listed twice"));
            }
            Ok(p) => seen.insert(p),
        }
    }
}

impl From<ApiKeyError> for ApiError {
    fn from(err: ApiKeyError) -> Self {
        match err {
            ApiKeyError::TooMany => ApiError::new(
                ErrorCode::ApiKeyLimitReached,
                format!("A tenant may have at most {MAX_KEYS_PER_TENANT} live API keys."),
            ),
            ApiKeyError::Store(e) => e.into(),
        }
    }
}

fn key_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "No live API key of this tenant has this id.",
    )
}

/// A key was made.
#[derive(poem_openapi::ApiResponse)]
pub enum CreatedApiKey {
    /// The new key, with its secret (shown this once).
    #[oai(status = 201)]
    Created(Json<CreatedApiKeyView>),
}

/// A key was revoked.
#[derive(poem_openapi::ApiResponse)]
pub enum RevokedApiKey {
    /// Revoked: refused from the next request on, on every instance.
    #[oai(status = 204)]
    Revoked,
}

#[OpenApi(tag = "ApiTag::ApiKeys")]
impl ApiKeysApi {
    /// Make an API key acting for you with some of your permissions.
    #[oai(
        path = "/v1/api-keys",
        method = "post",
        operation_id = "create_api_key"
    )]
    async fn create_api_key(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::ApiKeysManage>,
        body: JsonBody<CreateApiKey>,
    ) -> ApiResult<CreatedApiKey> {
        let body = body.0;
        let me = &auth.principal;
        let (wanted, _) = PermissionSet::from_names(body.permissions.iter().map(String::as_str));
        ensure_holds(
            auth.granted,
            wanted,
            "An API key cannot have permissions you do not hold",
        )?;
        let token = KeyToken::generate(me.tenant.id.0);
        let mut tx = auth.begin(&state).await?;
        let key = store::create_key(
            &mut tx,
            NewKey {
                token: &token,
                name: body.name.trim(),
                permissions: &wanted.names(),
                created_by: me.user_id,
                expires_at: body.expires_at,
            },
        )
        .await?;
        audit::record(
            &mut tx,
            "api_key.created",
            Some(me.user_id),
            Some(key.id),
            Some(me.session_id),
            &client_info(request),
            json!({ "name": key.name, "permissions": key.permissions, "expires_at": key.expires_at }),
        )
        .await?;
        tx.commit().await?;
        Ok(CreatedApiKey::Created(Json(CreatedApiKeyView {
            key: token.encode(),
            api_key: key.into(),
        })))
    }

    /// The tenant's live API keys, newest first (expired ones too, until revoked).
    #[oai(path = "/v1/api-keys", method = "get", operation_id = "list_api_keys")]
    async fn list_api_keys(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ApiKeysManage>,
    ) -> ApiResult<Json<ApiKeyList>> {
        let mut tx = auth.begin(&state).await?;
        let keys = store::list_keys(&mut tx).await?;
        tx.commit().await?;
        Ok(Json(ApiKeyList {
            items: keys.into_iter().map(ApiKeyView::from).collect(),
        }))
    }

    /// One live API key.
    #[oai(
        path = "/v1/api-keys/:id",
        method = "get",
        operation_id = "get_api_key"
    )]
    async fn get_api_key(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ApiKeysManage>,
        /// Key id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<ApiKeyView>> {
        let mut tx = auth.begin(&state).await?;
        let key = store::get_key(&mut tx, id.0).await?;
        tx.commit().await?;
        Ok(Json(key.ok_or_else(key_not_found)?.into()))
    }

    /// Revoke an API key: every instance refuses it from the next request on.
    #[oai(
        path = "/v1/api-keys/:id",
        method = "delete",
        operation_id = "delete_api_key"
    )]
    async fn delete_api_key(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::ApiKeysManage>,
        /// Key id.
        id: Path<Uuid>,
    ) -> ApiResult<RevokedApiKey> {
        let me = &auth.principal;
        let mut tx = auth.begin(&state).await?;
        let key = store::revoke_key(&mut tx, id.0)
            .await?
            .ok_or_else(key_not_found)?;
        audit::record(
            &mut tx,
            "api_key.revoked",
            Some(me.user_id),
            Some(key.id),
            Some(me.session_id),
            &client_info(request),
            json!({ "name": key.name, "created_by": key.created_by }),
        )
        .await?;
        tx.commit().await?;
        let tenant = me.tenant.id;
        state.api_keys.forget(tenant, key.id);
        state.revocations.revoke_sessions(tenant, &[key.id]).await;
        Ok(RevokedApiKey::Revoked)
    }
}
