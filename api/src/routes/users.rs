//! The current user (`/v1/me`) and the tenant's member directory (`/v1/users`).

use chrono::{DateTime, Utc};
use identity::{User, UserStatus, store};
use poem::{Request, web::Data};
use poem_openapi::{
    Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{UserAuth, client_info},
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
    routes::{ApiTag, auth::audit, auth::check_name, page},
    tenant::CurrentTenant,
};

/// Users endpoints.
pub struct UsersApi;

/// Where a user stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum UserStatusView {
    /// Registered; email not verified yet, cannot log in.
    Pending,
    /// May log in.
    Active,
    /// Switched off; may be reactivated.
    Deactivated,
    /// Banned.
    Banned,
}

impl From<UserStatus> for UserStatusView {
    fn from(status: UserStatus) -> Self {
        match status {
            UserStatus::Pending => Self::Pending,
            UserStatus::Active => Self::Active,
            UserStatus::Deactivated => Self::Deactivated,
            UserStatus::Banned => Self::Banned,
        }
    }
}

impl From<UserStatusView> for UserStatus {
    fn from(status: UserStatusView) -> Self {
        match status {
            UserStatusView::Pending => Self::Pending,
            UserStatusView::Active => Self::Active,
            UserStatusView::Deactivated => Self::Deactivated,
            UserStatusView::Banned => Self::Banned,
        }
    }
}

/// A user of the tenant.
#[derive(Debug, Object)]
pub struct UserView {
    /// User id.
    pub id: Uuid,
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: UserStatusView,
    /// Whether the email address has been verified.
    pub email_verified: bool,
    /// Role names.
    pub roles: Vec<String>,
    /// Last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            status: user.status.into(),
            email_verified: user.email_verified_at.is_some(),
            roles: vec![if user.is_owner { "owner" } else { "member" }.to_owned()],
            last_login_at: user.last_login_at,
            created_at: user.created_at,
        }
    }
}

/// A page of users.
#[derive(Debug, Object)]
pub struct UserPage {
    /// Users in order of creation.
    pub items: Vec<UserView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Status a user can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SettableUserStatus {
    /// Allowed to log in (reactivates a deactivated or banned user).
    Active,
    /// Switched off: every session ends at once.
    Deactivated,
    /// Banned: every session ends at once.
    Banned,
}

/// Changes to a user.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New status (owner only).
    pub status: Option<SettableUserStatus>,
    /// New display name (the user themselves, or the owner).
    pub name: Option<String>,
}

impl Validate for UpdateUser {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.status.is_none() && self.name.is_none() {
            errors.push(FieldError::new(
                "",
                "empty",
                "give `status`, `name` or both",
            ));
        }
        if let Some(name) = &self.name {
            check_name(&mut errors, "name", name);
        }
        all_valid(errors)
    }
}

#[OpenApi(tag = "ApiTag::Users")]
impl UsersApi {
    /// The current user.
    #[oai(path = "/v1/me", method = "get", operation_id = "get_me")]
    async fn me(
        &self,
        state: Data<&AppState>,
        auth: UserAuth,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
    ) -> ApiResult<Json<UserView>> {
        let me = auth.0;
        let mut tx = state.tenant_db.begin(me.tenant.id).await?;
        let user = store::user_by_id(&mut tx, me.user_id).await?;
        tx.commit().await?;
        let user = user
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "This user no longer exists."))?;
        Ok(Json(UserView::from(&user)))
    }

    /// List the tenant's users, in order of creation.
    #[oai(path = "/v1/users", method = "get", operation_id = "list_users")]
    async fn list_users(
        &self,
        state: Data<&AppState>,
        auth: UserAuth,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Only users with this status.
        status: Query<Option<UserStatusView>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<UserPage>> {
        let after = cursor.0.as_deref().map(decode_cursor).transpose()?;
        let mut tx = state.tenant_db.begin(auth.0.tenant.id).await?;
        let users =
            store::list_users(&mut tx, status.0.map(UserStatus::from), after, limit.0 + 1).await?;
        tx.commit().await?;
        let (users, next_cursor) = page(users, limit.0, |u| {
            format!("{}_{}", u.created_at.timestamp_micros(), u.id.simple())
        });
        Ok(Json(UserPage {
            items: users.iter().map(UserView::from).collect(),
            next_cursor,
        }))
    }

    /// One user of the tenant.
    #[oai(path = "/v1/users/:id", method = "get", operation_id = "get_user")]
    async fn get_user(
        &self,
        state: Data<&AppState>,
        auth: UserAuth,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// User id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<UserView>> {
        let mut tx = state.tenant_db.begin(auth.0.tenant.id).await?;
        let user = store::user_by_id(&mut tx, id.0).await?;
        tx.commit().await?;
        Ok(Json(UserView::from(&user.ok_or_else(user_not_found)?)))
    }

    /// Change a user's status or name.
    ///
    /// Deactivating or banning a user ends every session at once: their next request is
    /// refused even with an unexpired access token, and refreshing fails. Reactivating
    /// lets them log in again. Until roles exist, only the tenant's owner may change a
    /// status, and nobody their own.
    #[oai(path = "/v1/users/:id", method = "patch", operation_id = "update_user")]
    async fn update_user(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// User id.
        id: Path<Uuid>,
        body: JsonBody<UpdateUser>,
    ) -> ApiResult<Json<UserView>> {
        let me = auth.0;
        let client = client_info(request, state.settings.auth.trust_forwarded_for);
        let tenant = me.tenant.id;
        let target = id.0;
        let status = body.0.status.map(|s| match s {
            SettableUserStatus::Active => UserStatus::Active,
            SettableUserStatus::Deactivated => UserStatus::Deactivated,
            SettableUserStatus::Banned => UserStatus::Banned,
        });
        let mut tx = state.tenant_db.begin(tenant).await?;
        let actor = store::user_by_id(&mut tx, me.user_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "This user no longer exists."))?;
        if status.is_some() && !actor.is_owner {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "Only the tenant's owner may change a user's status.",
            ));
        }
        if status.is_some() && target == me.user_id {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "You cannot change your own status.",
            ));
        }
        if body.0.name.is_some() && target != me.user_id && !actor.is_owner {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "Only the user or the tenant's owner may rename a user.",
            ));
        }
        let name = body.0.name.as_deref().map(str::trim);
        let (before, after) = store::update_user(&mut tx, target, status, name)
            .await?
            .ok_or_else(user_not_found)?;
        let blocked = after.status.is_blocked() && !before.status.is_blocked();
        let unblocked = before.status.is_blocked() && !after.status.is_blocked();
        let ended = if blocked {
            store::revoke_user_sessions(&mut tx, target, None, &format!("user_{}", after.status))
                .await?
        } else {
            Vec::new()
        };
        if before.status != after.status {
            audit(
                &mut tx,
                "user.status_changed",
                Some(me.user_id),
                Some(target),
                Some(me.session_id),
                &client,
                json!({
                    "from": before.status.as_str(),
                    "to": after.status.as_str(),
                    "sessions_ended": ended.len(),
                }),
            )
            .await?;
        }
        tx.commit().await?;
        // The database has it; now every instance's next check sees it too.
        if blocked {
            state.revocations.block_user(tenant, target, &ended).await;
        } else if unblocked {
            state.revocations.unblock_user(tenant, target).await;
        }
        Ok(Json(UserView::from(&after)))
    }
}

fn default_limit() -> i64 {
    50
}

fn user_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "No user of this tenant has this id.")
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    cursor
        .split_once('_')
        .and_then(|(micros, id)| {
            let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
            Some((at, Uuid::parse_str(id).ok()?))
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                "Parameter `cursor` is not a cursor this API issued.",
            )
        })
}
