//! The current user (`/v1/me`), the tenant's member directory (`/v1/users`), users' roles
//! (`/v1/users/{id}/roles`) and forced logouts (`/v1/users/{id}/logout`); creating and
//! deleting users are declared here (their paths are this API's) and handled in
//! [`lifecycle`].
//!
//! Managing another user (status, name, roles) needs the endpoint's permission and every
//! permission the target holds: nobody can act on a user more powerful than they are.

use chrono::{DateTime, Utc};
use identity::{User, UserStatus, store};
use poem::{Request, web::Data};
use poem_openapi::{
    Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use rbac::{Permission, PermissionSet, SystemRole, store as roles};
use serde::Deserialize;
use serde_json::json;
use tenancy::TenantTx;
use uuid::Uuid;

pub mod lifecycle;

use lifecycle::{
    deletion::{DeleteMeRequest, UserDeleted},
    members::{CreateUser, UserCreated},
};

use crate::{
    AppState,
    auth::{Authorized, Principal, UserAuth, client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    limits,
    payload::{JsonBody, Validate, all_valid},
    routes::{
        ApiTag, audit,
        checks::{check_name, check_some_change},
        guards::{allowed_by, ensure_holds, known_roles, lock_for_change},
        pagination::{created_cursor, decode_created_cursor, page},
    },
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
    /// Every session ended for a security reason; back to active through a password reset.
    SecurityIssue,
    /// Deleted: personal data erased; kept so that the audit log's ids still point at it.
    Deleted,
}

impl From<UserStatus> for UserStatusView {
    fn from(status: UserStatus) -> Self {
        match status {
            UserStatus::Pending => Self::Pending,
            UserStatus::Active => Self::Active,
            UserStatus::Deactivated => Self::Deactivated,
            UserStatus::Banned => Self::Banned,
            UserStatus::SecurityIssue => Self::SecurityIssue,
            UserStatus::Deleted => Self::Deleted,
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
            UserStatusView::SecurityIssue => Self::SecurityIssue,
            UserStatusView::Deleted => Self::Deleted,
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
    /// The roles the user holds.
    pub roles: Vec<RoleRef>,
    /// Last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl UserView {
    fn new(user: &User, roles: Vec<RoleRef>) -> Self {
        Self {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            status: user.status.into(),
            email_verified: user.email_verified_at.is_some(),
            roles,
            last_login_at: user.last_login_at,
            created_at: user.created_at,
        }
    }
}

/// A role a user holds.
#[derive(Debug, Object)]
pub struct RoleRef {
    /// Role id.
    pub id: Uuid,
    /// Role name.
    pub name: String,
}

/// Views of `users`, with the roles each holds.
async fn user_views(tx: &mut TenantTx, users: &[User]) -> Result<Vec<UserView>, ApiError> {
    let ids: Vec<Uuid> = users.iter().map(|u| u.id).collect();
    let mut held = roles::roles_of_users(tx, &ids)
        .await
        .map_err(ApiError::internal)?;
    Ok(users
        .iter()
        .map(|u| {
            let roles = held
                .remove(&u.id)
                .unwrap_or_default()
                .into_iter()
                .map(|(id, name)| RoleRef { id, name })
                .collect();
            UserView::new(u, roles)
        })
        .collect())
}

pub(crate) async fn user_view(tx: &mut TenantTx, user: &User) -> Result<UserView, ApiError> {
    let mut views = user_views(tx, std::slice::from_ref(user)).await?;
    views.pop().ok_or_else(user_not_found)
}

/// The current user and what they may do.
#[derive(Debug, Object)]
pub struct MeView {
    /// The user.
    #[oai(flatten)]
    pub user: UserView,
    /// Every permission the user's roles grant.
    pub permissions: Vec<String>,
}

/// Changes to one's own profile.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    /// New display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: String,
}

impl Validate for UpdateMe {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_name(&mut errors, "name", &self.name);
        all_valid(errors)
    }
}

/// The roles a user should hold.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SetUserRoles {
    /// Ids of the tenant's roles (at most 20); the user holds exactly these afterwards.
    #[oai(validator(max_items = 20))]
    pub role_ids: Vec<Uuid>,
}

impl Validate for SetUserRoles {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.role_ids.len() > 20 {
            errors.push(FieldError::new(
                "role_ids",
                FieldCode::TooLong,
                "at most 20 roles",
            ));
        }
        all_valid(errors)
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
    /// New status.
    pub status: Option<SettableUserStatus>,
    /// New display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: Option<String>,
}

impl Validate for UpdateUser {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_some_change(
            &mut errors,
            &[
                ("status", self.status.is_some()),
                ("name", self.name.is_some()),
            ],
        );
        if let Some(name) = &self.name {
            check_name(&mut errors, "name", name);
        }
        all_valid(errors)
    }
}

/// What a forced logout ended.
#[derive(Debug, Object)]
pub struct LoggedOut {
    /// Sessions ended (0 when the user had none).
    pub sessions_ended: u64,
}

#[OpenApi(tag = "ApiTag::Users")]
impl UsersApi {
    /// The current user, their roles and permissions.
    #[oai(path = "/v1/me", method = "get", operation_id = "get_me")]
    async fn me(&self, state: Data<&AppState>, auth: UserAuth) -> ApiResult<Json<MeView>> {
        let me = auth.0;
        let permissions = state.permissions.of(me.tenant.id, me.user_id).await?;
        let mut tx = me.begin(&state).await?;
        let user = current_user(&mut tx, &me).await?;
        let user = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(Json(MeView {
            user,
            permissions: permissions.names(),
        }))
    }

    /// Change one's own display name.
    #[oai(path = "/v1/me", method = "patch", operation_id = "update_me")]
    async fn update_me(
        &self,
        state: Data<&AppState>,
        auth: UserAuth,
        body: JsonBody<UpdateMe>,
    ) -> ApiResult<Json<UserView>> {
        let me = auth.0;
        let mut tx = me.begin(&state).await?;
        let user = store::update_user(&mut tx, me.user_id, None, Some(body.0.name.trim()))
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "This user no longer exists."))?
            .after;
        let view = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(Json(view))
    }

    /// List the tenant's users, in order of creation.
    #[oai(path = "/v1/users", method = "get", operation_id = "list_users")]
    async fn list_users(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::UsersRead>,
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
        let after = cursor.0.as_deref().map(decode_created_cursor).transpose()?;
        let mut tx = auth.begin(&state).await?;
        let users =
            store::list_users(&mut tx, status.0.map(UserStatus::from), after, limit.0 + 1).await?;
        let (users, next_cursor) = page(users, limit.0, |u| created_cursor(u.created_at, u.id));
        let items = user_views(&mut tx, &users).await?;
        tx.commit().await?;
        Ok(Json(UserPage { items, next_cursor }))
    }

    /// One user of the tenant.
    #[oai(path = "/v1/users/:id", method = "get", operation_id = "get_user")]
    async fn get_user(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::UsersRead>,
        /// User id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<UserView>> {
        let mut tx = auth.begin(&state).await?;
        let user = store::user_by_id(&mut tx, id.0)
            .await?
            .ok_or_else(user_not_found)?;
        let view = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(Json(view))
    }

    /// Change a user's status or name.
    ///
    /// Deactivating or banning a user ends every session at once: their next request is
    /// refused even with an unexpired access token, and refreshing fails. Reactivating
    /// lets them log in again (not a user with a security issue: only a password reset
    /// does, and such a user may only be banned, 409 for any other status; unbanning or
    /// reactivating them later gives back `security_issue`, never `active`, until their
    /// password is reset). Deleted users are not found. Nobody can change their own status (use `PATCH /v1/me` for
    /// one's own name), manage a user holding permissions they lack, or block the tenant's
    /// last active owner.
    #[oai(path = "/v1/users/:id", method = "patch", operation_id = "update_user")]
    async fn update_user(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        /// User id.
        id: Path<Uuid>,
        body: JsonBody<UpdateUser>,
    ) -> ApiResult<Json<UserView>> {
        let me = auth.principal;
        let client = client_info(request);
        let tenant = me.tenant.id;
        let target = id.0;
        let status = body.0.status.map(|s| match s {
            SettableUserStatus::Active => UserStatus::Active,
            SettableUserStatus::Deactivated => UserStatus::Deactivated,
            SettableUserStatus::Banned => UserStatus::Banned,
        });
        if status.is_some() && target == me.user_id {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "You cannot change your own status.",
            ));
        }
        let mut tx = me.begin(&state).await?;
        let (_, held) = lock_for_change(&mut tx, &me, Permission::UsersManage).await?;
        let current = store::user_by_id(&mut tx, target)
            .await?
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or_else(user_not_found)?;
        // From a security issue the only way back is a password reset; an administrator may
        // only ban (or delete) such a user, not move them through another status.
        if current.status == UserStatus::SecurityIssue
            && status.is_some_and(|s| !matches!(s, UserStatus::SecurityIssue | UserStatus::Banned))
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "This user has a security issue: only a password reset makes them active again.",
            ));
        }
        ensure_outranks(&mut tx, held, target).await?;
        if status.is_some_and(UserStatus::is_blocked) {
            ensure_not_last_owner(&mut tx, target).await?;
        }
        let name = body.0.name.as_deref().map(str::trim);
        let store::UserUpdate {
            before,
            after,
            activated,
        } = store::update_user(&mut tx, target, status, name)
            .await?
            .ok_or_else(user_not_found)?;
        limits::ensure_seats(&state, &mut tx, &me.tenant, activated).await?;
        let blocked = after.status.is_blocked() && !before.status.is_blocked();
        let unblocked = before.status.is_blocked() && !after.status.is_blocked();
        let (ended, keys) = if blocked {
            (
                store::revoke_user_sessions(
                    &mut tx,
                    target,
                    None,
                    &format!("user_{}", after.status),
                )
                .await?,
                identity::api_keys::revoke_keys_of(&mut tx, target).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        if before.status != after.status {
            audit::record(
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
                    "api_keys_revoked": keys.len(),
                }),
            )
            .await?;
        }
        let view = user_view(&mut tx, &after).await?;
        tx.commit().await?;
        // The database has it; now every instance's next check sees it too.
        if blocked {
            // A key's id stands where a session's does on the list.
            for key in &keys {
                state.api_keys.forget(tenant, *key);
            }
            let revoked: Vec<Uuid> = ended.iter().chain(&keys).copied().collect();
            state.revocations.block_user(tenant, target, &revoked).await;
        } else if unblocked {
            state.revocations.unblock_user(tenant, target).await;
        }
        Ok(Json(view))
    }

    /// Create a user.
    ///
    /// The user is invited with their name and roles: an email with a single-use link
    /// (valid for `CANOPY_INVITATION_TTL`) lets them set their password through
    /// `POST /v1/auth/accept-invitation` (where `name` may be left out) and log in as an
    /// active member with a verified address. Until then they are an open invitation
    /// (`GET /v1/invitations`, resend, revoke) that holds one of the plan's seats: a plan
    /// without a free seat is 402 `plan_limit_reached`. An address that already has a user
    /// is 409 `already_member`; one with an open invitation gets it refreshed (200) with
    /// this name and these roles. You must hold every permission the roles allow. Audited
    /// as `user.created`.
    #[oai(path = "/v1/users", method = "post", operation_id = "create_user")]
    async fn create_user(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        body: JsonBody<CreateUser>,
    ) -> ApiResult<UserCreated> {
        lifecycle::members::create_user(&state, request, auth, body.0).await
    }

    /// Delete a user.
    ///
    /// Erases the user's personal data: their address and name (replaced by a placeholder
    /// and "Deleted user"), password, sessions, refresh and single-use tokens, and role
    /// assignments (their seat is free). Every token of theirs is refused from the next
    /// request on, everywhere. Their address can be registered or invited again. The audit
    /// log keeps its events, with the ids pointing at the deleted user (shown
    /// pseudonymously as `actor_label`). Not yourself (`DELETE /v1/me`), not a user
    /// holding permissions you lack, not the tenant's last active owner (409
    /// `last_owner`). Audited as `user.deleted`.
    #[oai(
        path = "/v1/users/:id",
        method = "delete",
        operation_id = "delete_user"
    )]
    async fn delete_user(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        /// User id.
        id: Path<Uuid>,
    ) -> ApiResult<UserDeleted> {
        lifecycle::deletion::delete_user(&state, request, auth, id.0).await
    }

    /// Delete one's own account.
    ///
    /// Needs the current password (a wrong one is a 422 on `password` and counts toward
    /// the lockout). Erases the account's personal data as `DELETE /v1/users/{id}` does;
    /// this token and every other one stop working at once. The tenant's last active
    /// owner cannot leave (409 `last_owner`): make another user owner first.
    #[oai(path = "/v1/me", method = "delete", operation_id = "delete_me")]
    async fn delete_me(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: UserAuth,
        body: JsonBody<DeleteMeRequest>,
    ) -> ApiResult<UserDeleted> {
        lifecycle::deletion::delete_me(&state, request, auth, body.0).await
    }

    /// Log a user out everywhere.
    ///
    /// Ends every session of the user at once, without changing their status: their next
    /// request is refused even with an unexpired access token, refreshing fails, and they
    /// may log in again. For a lost or stolen device. Audited as `user.logged_out`. You
    /// must hold every permission the user holds.
    #[oai(
        path = "/v1/users/:id/logout",
        method = "post",
        operation_id = "logout_user"
    )]
    async fn logout_user(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        /// User id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<LoggedOut>> {
        let me = auth.principal;
        let client = client_info(request);
        let target = id.0;
        let mut tx = me.begin(&state).await?;
        let (_, held) = lock_for_change(&mut tx, &me, Permission::UsersManage).await?;
        store::user_by_id(&mut tx, target)
            .await?
            .ok_or_else(user_not_found)?;
        ensure_outranks(&mut tx, held, target).await?;
        let ended = store::revoke_user_sessions(&mut tx, target, None, "forced_logout").await?;
        audit::record(
            &mut tx,
            "user.logged_out",
            Some(me.user_id),
            Some(target),
            Some(me.session_id),
            &client,
            json!({ "sessions": ended }),
        )
        .await?;
        tx.commit().await?;
        // The database has it; now every instance's next check sees it too.
        state
            .revocations
            .revoke_sessions(me.tenant.id, &ended)
            .await;
        Ok(Json(LoggedOut {
            sessions_ended: ended.len() as u64,
        }))
    }

    /// Set a user's roles.
    ///
    /// The user holds exactly the given roles afterwards, from their next request on. You
    /// must hold every permission the user has now and every one the new roles would add;
    /// the tenant's last active owner keeps the owner role.
    #[oai(
        path = "/v1/users/:id/roles",
        method = "put",
        operation_id = "set_user_roles"
    )]
    async fn set_user_roles(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::RolesManage>,
        /// User id.
        id: Path<Uuid>,
        body: JsonBody<SetUserRoles>,
    ) -> ApiResult<Json<UserView>> {
        let me = auth.principal;
        let client = client_info(request);
        let tenant = me.tenant.id;
        let target = id.0;
        let requested = body.0.role_ids;
        let mut tx = me.begin(&state).await?;
        let (all_roles, held) = lock_for_change(&mut tx, &me, Permission::RolesManage).await?;
        let wanted = known_roles(&all_roles, &requested)?;
        let user = store::user_by_id(&mut tx, target)
            .await?
            .ok_or_else(user_not_found)?;
        let current = ensure_outranks(&mut tx, held, target).await?;
        ensure_holds(
            held,
            allowed_by(&all_roles, &wanted).difference(current),
            "These roles grant permissions you do not hold",
        )?;
        let owner = all_roles
            .iter()
            .find(|r| r.system == Some(SystemRole::Owner))
            .map(|r| r.id);
        if owner.is_some_and(|owner| !wanted.contains(&owner)) {
            ensure_not_last_owner(&mut tx, target).await?;
        }
        let before = user_view(&mut tx, &user).await?;
        roles::set_user_roles(&mut tx, target, &wanted, Some(me.user_id))
            .await
            .map_err(ApiError::internal)?;
        let after = user_view(&mut tx, &user).await?;
        let names = |v: &UserView| v.roles.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        audit::record(
            &mut tx,
            "user.roles_changed",
            Some(me.user_id),
            Some(target),
            Some(me.session_id),
            &client,
            json!({ "from": names(&before), "to": names(&after) }),
        )
        .await?;
        tx.commit().await?;
        state.permissions.invalidate(tenant).await;
        Ok(Json(after))
    }
}

pub(crate) async fn current_user(tx: &mut TenantTx, me: &Principal) -> Result<User, ApiError> {
    store::user_by_id(tx, me.user_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "This user no longer exists."))
}

/// A 403 unless the caller (holding `held`) holds every permission `target` has; returns
/// the target's permissions.
pub(crate) async fn ensure_outranks(
    tx: &mut TenantTx,
    held: PermissionSet,
    target: Uuid,
) -> Result<PermissionSet, ApiError> {
    let theirs = roles::user_permissions(tx, target)
        .await
        .map_err(ApiError::internal)?;
    ensure_holds(held, theirs, "This user holds permissions you do not")?;
    Ok(theirs)
}

/// A 409 if `target` is an owner and no other active user is. Call under the roles lock.
pub(crate) async fn ensure_not_last_owner(tx: &mut TenantTx, target: Uuid) -> Result<(), ApiError> {
    let is_owner = roles::holds_system_role(tx, target, SystemRole::Owner)
        .await
        .map_err(ApiError::internal)?;
    if !is_owner {
        return Ok(());
    }
    let others = roles::other_active_owners(tx, target)
        .await
        .map_err(ApiError::internal)?;
    if others > 0 {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::LastOwner,
        "This user is the tenant's last active owner; make another user owner first.",
    ))
}

fn default_limit() -> i64 {
    50
}

pub(crate) fn user_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "No user of this tenant has this id.")
}
