//! Users an administrator creates (`POST /v1/users`) and the security-issue status
//! (`POST /v1/users/{id}/security-issue`).
//!
//! A created user is an invitation that carries their name and roles and holds a seat
//! until it is accepted, revoked or expires: the invitation machinery (its email job, its
//! resend and revocation, its acceptance that sets the password) is the one path, so
//! nothing is duplicated and no password-less user row exists meanwhile.

use identity::{UserStatus, invitations::MAX_ROLES, link_emails, store};
use poem::{Request, web::Data};
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use rbac::Permission;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    payload::{EmailText, Validate, all_valid},
    routes::{
        ApiTag, audit,
        checks::{check_email, check_name},
        guards::lock_for_change,
        invitations::{InvitationView, Invitee, invite_in},
        users::{UserView, ensure_not_last_owner, ensure_outranks, user_not_found, user_view},
    },
};

/// Users an administrator creates, and security issues.
pub struct MembersApi;

/// A user to create.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Their email address; the link that sets their password is sent there (surrounding
    /// whitespace is ignored; at most 254 bytes).
    pub email: EmailText,
    /// Display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: String,
    /// Ids of the tenant's roles they will hold (1 to 20). You must hold every permission
    /// these roles allow.
    #[oai(validator(min_items = 1, max_items = 20))]
    pub role_ids: Vec<Uuid>,
}

impl Validate for CreateUser {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_email(&mut errors, "email", &self.email);
        check_name(&mut errors, "name", &self.name);
        if self.role_ids.is_empty() || self.role_ids.len() > MAX_ROLES {
            errors.push(FieldError::new(
                "role_ids",
                FieldCode::Length,
                format!("must name 1 to {MAX_ROLES} roles"),
            ));
        }
        all_valid(errors)
    }
}

/// Answer to creating a user.
#[derive(ApiResponse)]
pub enum UserCreated {
    /// Created: the user is an open invitation (holding a seat) until they accept it; the
    /// email with its link is on its way. `Location` is the invitation.
    #[oai(status = 201)]
    Created(Json<InvitationView>, #[oai(header = "Location")] String),
    /// The address had an open invitation: it now carries this name and these roles, holds a
    /// seat, has a new lifetime, its previous link no longer works, and a new email is on its
    /// way.
    #[oai(status = 200)]
    Refreshed(Json<InvitationView>),
}

/// What flagging a security issue ended.
#[derive(Debug, Object)]
pub struct SecurityIssueFlagged {
    /// The user now (status `security_issue`).
    pub user: UserView,
    /// Sessions ended (0 when the user had none).
    pub sessions_ended: u64,
}

#[OpenApi(tag = "ApiTag::Users")]
impl MembersApi {
    /// Flag a security issue on a user.
    ///
    /// Ends every session of the user at once (their next request is refused even with an
    /// unexpired access token, and refreshing fails) and sets their status to
    /// `security_issue`: logging in answers 403 `password_reset_required` until they reset
    /// their password (`POST /v1/auth/forgot-password`), which makes them active again.
    /// They keep their seat and roles, and get a security notice. Only an active user (or
    /// one already flagged: flagging again ends any new session) can be flagged; not
    /// yourself, not a user holding permissions you lack, not the last active owner.
    /// Audited as `user.security_issue`.
    #[oai(
        path = "/v1/users/:id/security-issue",
        method = "post",
        operation_id = "flag_user_security_issue"
    )]
    async fn flag_security_issue(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        /// User id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<SecurityIssueFlagged>> {
        let me = auth.principal;
        let client = client_info(request);
        let target = id.0;
        if target == me.user_id {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "You cannot flag yourself; change your password instead.",
            ));
        }
        let mut tx = me.begin(&state).await?;
        let (_, held) = lock_for_change(&mut tx, &me, Permission::UsersManage).await?;
        let user = store::user_by_id(&mut tx, target)
            .await?
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or_else(user_not_found)?;
        ensure_outranks(&mut tx, held, target).await?;
        if !matches!(user.status, UserStatus::Active | UserStatus::SecurityIssue) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "Only an active user can be flagged; this one is {}.",
                    user.status
                ),
            ));
        }
        ensure_not_last_owner(&mut tx, target).await?;
        let update = store::update_user(&mut tx, target, Some(UserStatus::SecurityIssue), None)
            .await?
            .ok_or_else(user_not_found)?;
        let ended = store::revoke_user_sessions(&mut tx, target, None, "security_issue").await?;
        let keys = identity::api_keys::revoke_keys_of(&mut tx, target).await?;
        audit::record(
            &mut tx,
            "user.security_issue",
            Some(me.user_id),
            Some(target),
            Some(me.session_id),
            &client,
            json!({
                "from": user.status.as_str(),
                "sessions_ended": ended.len(),
                "api_keys_revoked": keys.len(),
            }),
        )
        .await?;
        jobs::enqueue(
            &mut tx,
            link_emails::notice(
                &update.after,
                "Your sessions were ended for a security reason. Reset your password to log in again.",
            )?,
        )
        .await?;
        let view = user_view(&mut tx, &update.after).await?;
        tx.commit().await?;
        // The database has it; now every instance's next check sees it too.
        // A key's id stands where a session's does on the list.
        for key in &keys {
            state.api_keys.forget(me.tenant.id, *key);
        }
        let revoked: Vec<Uuid> = ended.iter().chain(&keys).copied().collect();
        state
            .revocations
            .block_user(me.tenant.id, target, &revoked)
            .await;
        Ok(Json(SecurityIssueFlagged {
            user: view,
            sessions_ended: ended.len() as u64,
        }))
    }
}

/// `POST /v1/users` (declared in `UsersApi`, which owns the path: poem-openapi documents a
/// path from one `#[OpenApi]` impl only): invites `body` as a named, seat-holding
/// invitation.
pub(crate) async fn create_user(
    state: &AppState,
    request: &Request,
    auth: Authorized<perm::UsersManage>,
    body: CreateUser,
) -> ApiResult<UserCreated> {
    let me = auth.principal;
    let client = client_info(request);
    let mut tx = me.begin(state).await?;
    let (invitation, created, all_roles) = invite_in(
        state,
        &mut tx,
        &me,
        Invitee {
            email: body.email.trim(),
            role_ids: &body.role_ids,
            name: Some(body.name.trim()),
            reserves_seat: true,
        },
    )
    .await?;
    let view = InvitationView::new(&invitation, &all_roles);
    audit::record(
        &mut tx,
        "user.created",
        Some(me.user_id),
        None,
        Some(me.session_id),
        &client,
        json!({
            "invitation_id": invitation.id,
            "email": invitation.email,
            "refreshed": !created,
            "roles": view.roles.iter().map(|r| &r.name).collect::<Vec<_>>(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(if created {
        let location = format!("/v1/invitations/{}", invitation.id);
        UserCreated::Created(Json(view), location)
    } else {
        UserCreated::Refreshed(Json(view))
    })
}
