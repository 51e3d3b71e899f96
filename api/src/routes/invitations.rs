//! Invitations (`/v1/invitations`) and their acceptance (`POST /v1/auth/accept-invitation`).
//!
//! Inviting needs `users:manage` and every permission the invited roles allow (nobody
//! invites someone more powerful than themselves), checked under the roles lock like role
//! assignments. The email is a job that mints its link itself (see
//! [`identity::invitations`]): no job payload carries a usable token. Accepting creates
//! an active, verified user holding the invited roles and logs them in; the plan's seat
//! limit is checked in the same transaction.

use chrono::{DateTime, Utc};
use identity::{
    Email, Invitation, OpaqueToken, UserStatus,
    invitations::{self, InvitationEmail, MAX_ROLES, NewInvitation},
    store::{self, NewUser},
};
use jobs::Job;
use poem::{Request, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use rbac::{Permission, PermissionSet, Role, store as roles};
use serde::Deserialize;
use serde_json::json;
use tenancy::TenantTx;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, Principal, client_info, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    limits::{self, Limited},
    payload::{EmailText, JsonBody, Validate, all_valid},
    routes::{
        ApiTag, audit,
        auth::{LoginOutcome, mfa_login, recovery_throttle, token_pair},
        checks::{check_email, check_name, check_new_password},
        guards::{allowed_by, ensure_holds, known_roles, lock_for_change},
        pagination::{created_cursor, decode_created_cursor, page},
        users::RoleRef,
    },
    tenant::CurrentTenant,
};

/// Invitation endpoints.
pub struct InvitationsApi;

/// Where an open invitation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum InvitationStatus {
    /// Its link works (once the email has gone out).
    Pending,
    /// Its link no longer works; resend it to start again.
    Expired,
}

/// An open invitation (neither accepted nor revoked).
#[derive(Debug, Object)]
pub struct InvitationView {
    /// Invitation id.
    pub id: Uuid,
    /// The address invited.
    pub email: String,
    /// The roles the new user will hold (roles deleted since are left out).
    pub roles: Vec<RoleRef>,
    /// Who invited (last), if they still exist.
    pub invited_by: Option<Uuid>,
    /// Pending or expired.
    pub status: InvitationStatus,
    /// First invited.
    pub created_at: DateTime<Utc>,
    /// The link stops working then.
    pub expires_at: DateTime<Utc>,
    /// When the current link was emailed; absent while its email is queued.
    pub sent_at: Option<DateTime<Utc>>,
    /// The display name given by an administrator who created the user
    /// (`POST /v1/users`); acceptance keeps it unless the invitee chooses another.
    pub name: Option<String>,
    /// Whether it holds one of the plan's seats until accepted, revoked or expired (a user
    /// created with `POST /v1/users`).
    pub reserves_seat: bool,
}

impl InvitationView {
    pub(crate) fn new(invitation: &Invitation, all_roles: &[Role]) -> Self {
        Self {
            id: invitation.id,
            email: invitation.email.clone(),
            roles: invitation
                .role_ids
                .iter()
                .filter_map(|id| all_roles.iter().find(|r| r.id == *id))
                .map(|r| RoleRef {
                    id: r.id,
                    name: r.name.clone(),
                })
                .collect(),
            invited_by: invitation.invited_by,
            status: if invitation.expires_at > Utc::now() {
                InvitationStatus::Pending
            } else {
                InvitationStatus::Expired
            },
            created_at: invitation.created_at,
            expires_at: invitation.expires_at,
            sent_at: invitation.sent_at,
            name: invitation.name.clone(),
            reserves_seat: invitation.reserves_seat,
        }
    }
}

/// A page of open invitations.
#[derive(Debug, Object)]
pub struct InvitationPage {
    /// Oldest first.
    pub items: Vec<InvitationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Someone to invite.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// Their email address; the invitation link is sent there (surrounding whitespace is
    /// ignored; at most 254 bytes).
    pub email: EmailText,
    /// Ids of the tenant's roles they will hold (1 to 20). You must hold every
    /// permission these roles allow.
    #[oai(validator(min_items = 1, max_items = 20))]
    pub role_ids: Vec<Uuid>,
}

// The schema's `maxItems` of `role_ids` (attributes take literals only).
const _: () = assert!(MAX_ROLES == 20, "update maxItems of `role_ids`");

impl Validate for CreateInvitation {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_email(&mut errors, "email", &self.email);
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

/// Accepting an invitation: the token of its link and the new user's profile.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitationRequest {
    /// The `token` query parameter of the invitation link.
    pub token: String,
    /// Display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters. Optional when the invitation names the user (a user created
    /// with `POST /v1/users`): then it defaults to that name.
    pub name: Option<String>,
    /// 12 to 128 characters, not a common one.
    #[oai(validator(min_length = 12, max_length = 128))]
    pub password: String,
}

impl Validate for AcceptInvitationRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(name) = &self.name {
            check_name(&mut errors, "name", name);
        }
        check_new_password(&mut errors, "password", &self.password);
        all_valid(errors)
    }
}

/// Answer to an invitation.
#[derive(ApiResponse)]
pub enum InvitationCreated {
    /// Invited; the email is on its way.
    #[oai(status = 201)]
    Created(Json<InvitationView>, #[oai(header = "Location")] String),
    /// The address had an open invitation: it now has these roles and a new lifetime, its
    /// previous link no longer works, and a new email is on its way.
    #[oai(status = 200)]
    Refreshed(Json<InvitationView>),
}

/// Answer to a resend.
#[derive(ApiResponse)]
pub enum InvitationResent {
    /// The previous link no longer works; an email with a new one is on its way.
    #[oai(status = 202)]
    Accepted(Json<InvitationView>),
}

/// Answer to a revocation.
#[derive(ApiResponse)]
pub enum InvitationRevoked {
    /// Revoked: its link no longer works.
    #[oai(status = 204)]
    Revoked,
}

#[OpenApi(tag = "ApiTag::Invitations")]
impl InvitationsApi {
    /// Invite someone to the tenant.
    ///
    /// Emails a single-use link (valid for `CANOPY_INVITATION_TTL`, 7 days by default) that
    /// lets its recipient choose a name and password and join with the given roles, as an
    /// active member with a verified address. An address that already has a user is 409
    /// `already_member`. Inviting an address that has an open invitation refreshes it
    /// (200): the roles and lifetime are replaced and only the new link works.
    #[oai(
        path = "/v1/invitations",
        method = "post",
        operation_id = "create_invitation"
    )]
    async fn create_invitation(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        body: JsonBody<CreateInvitation>,
    ) -> ApiResult<InvitationCreated> {
        let me = auth.principal;
        let client = client_info(request);
        let body = body.0;
        let mut tx = me.begin(&state).await?;
        let (invitation, created, all_roles) = invite_in(
            &state,
            &mut tx,
            &me,
            Invitee {
                email: body.email.trim(),
                role_ids: &body.role_ids,
                name: None,
                reserves_seat: false,
            },
        )
        .await?;
        let view = InvitationView::new(&invitation, &all_roles);
        audit::record(
            &mut tx,
            if created {
                "invitation.created"
            } else {
                "invitation.refreshed"
            },
            Some(me.user_id),
            None,
            Some(me.session_id),
            &client,
            json!({
                "invitation_id": invitation.id,
                "email": invitation.email,
                "roles": view.roles.iter().map(|r| &r.name).collect::<Vec<_>>(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(if created {
            let location = format!("/v1/invitations/{}", invitation.id);
            InvitationCreated::Created(Json(view), location)
        } else {
            InvitationCreated::Refreshed(Json(view))
        })
    }

    /// List open invitations, oldest first (expired ones included, until resent or
    /// revoked).
    #[oai(
        path = "/v1/invitations",
        method = "get",
        operation_id = "list_invitations"
    )]
    async fn list_invitations(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::UsersManage>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<InvitationPage>> {
        let after = cursor.0.as_deref().map(decode_created_cursor).transpose()?;
        let mut tx = auth.begin(&state).await?;
        let open = invitations::list_open(&mut tx, after, limit.0 + 1).await?;
        let all_roles = roles::list_roles(&mut tx)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        let (open, next_cursor) = page(open, limit.0, |i| created_cursor(i.created_at, i.id));
        Ok(Json(InvitationPage {
            items: open
                .iter()
                .map(|i| InvitationView::new(i, &all_roles))
                .collect(),
            next_cursor,
        }))
    }

    /// Revoke an open invitation: its link stops working at once.
    #[oai(
        path = "/v1/invitations/:id",
        method = "delete",
        operation_id = "revoke_invitation"
    )]
    async fn revoke_invitation(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        /// Invitation id.
        id: Path<Uuid>,
    ) -> ApiResult<InvitationRevoked> {
        let me = auth.principal;
        let client = client_info(request);
        let mut tx = me.begin(&state).await?;
        let (all_roles, held) = lock_for_change(&mut tx, &me, Permission::UsersManage).await?;
        let invitation = invitations::revoke(&mut tx, id.0)
            .await?
            .ok_or_else(invitation_not_found)?;
        // Refused, the revocation rolls back with the transaction.
        ensure_may_handle(held, &all_roles, &invitation)?;
        audit::record(
            &mut tx,
            "invitation.revoked",
            Some(me.user_id),
            None,
            Some(me.session_id),
            &client,
            json!({ "invitation_id": invitation.id, "email": invitation.email }),
        )
        .await?;
        tx.commit().await?;
        Ok(InvitationRevoked::Revoked)
    }

    /// Resend an open invitation.
    ///
    /// The current link stops working at once, the invitation's lifetime starts again, and
    /// an email with a new link is on its way. You must hold every permission its roles
    /// allow, as for inviting.
    #[oai(
        path = "/v1/invitations/:id/resend",
        method = "post",
        operation_id = "resend_invitation"
    )]
    async fn resend_invitation(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::UsersManage>,
        /// Invitation id.
        id: Path<Uuid>,
    ) -> ApiResult<InvitationResent> {
        let me = auth.principal;
        let client = client_info(request);
        let mut tx = me.begin(&state).await?;
        let (all_roles, held) = lock_for_change(&mut tx, &me, Permission::UsersManage).await?;
        let invitation = invitations::renew(&mut tx, id.0, state.settings.auth.invitation_ttl)
            .await?
            .ok_or_else(invitation_not_found)?;
        ensure_may_handle(held, &all_roles, &invitation)?;
        let email = InvitationEmail {
            invitation_id: invitation.id,
        };
        jobs::enqueue(&mut tx, email.to_job()?).await?;
        audit::record(
            &mut tx,
            "invitation.resent",
            Some(me.user_id),
            None,
            Some(me.session_id),
            &client,
            json!({ "invitation_id": invitation.id, "email": invitation.email }),
        )
        .await?;
        tx.commit().await?;
        Ok(InvitationResent::Accepted(Json(InvitationView::new(
            &invitation,
            &all_roles,
        ))))
    }

    /// Accept an invitation.
    ///
    /// Creates the invited user, active and with a verified address, holding the invited
    /// roles (those that still exist), and logs them in: the answer is the same as a
    /// login's. `status` says what it holds: `authenticated`, the session's tokens; or
    /// `mfa_enrollment_required` (the tenant's `mfa_required_for` lists one of the invited
    /// roles), an MFA token for `POST /v1/auth/mfa/enroll` and no session before the
    /// enrollment. For a user an administrator created (`POST /v1/users`) this is how they set
    /// their password; `name` may then be left out. The link works once. An unknown, used, replaced, revoked or expired link
    /// is 400 `invitation_invalid`; a tenant whose plan has no seat left is 402
    /// `plan_limit_reached` (the link keeps working).
    #[oai(
        path = "/v1/auth/accept-invitation",
        method = "post",
        operation_id = "accept_invitation"
    )]
    async fn accept_invitation(
        &self,
        state: Data<&AppState>,
        request: &Request,
        tenant: CurrentTenant,
        body: JsonBody<AcceptInvitationRequest>,
    ) -> ApiResult<Json<LoginOutcome>> {
        let client = recovery_throttle(&state, request, &tenant).await?;
        let body = body.0;
        let token = OpaqueToken::parse(&body.token).ok_or_else(invitation_invalid)?;
        let password_hash = state.hasher.hash(&body.password).await?;
        let tenant_id = tenant.0.id;
        let mut tx = tenant.begin(&state).await?;
        // The roles lock before the seat lock, as everywhere: assigning roles is a change.
        roles::lock_roles(&mut tx)
            .await
            .map_err(ApiError::internal)?;
        let Some(invitation) = invitations::accept(&mut tx, &token).await? else {
            tx.rollback().await?;
            return Err(invitation_invalid());
        };
        let name = match (body.name.as_deref(), invitation.name.as_deref()) {
            (Some(given), _) => given.trim().to_owned(),
            (None, Some(named)) => named.to_owned(),
            (None, None) => {
                tx.rollback().await?;
                return Err(ApiError::validation(vec![FieldError::new(
                    "name",
                    FieldCode::Required,
                    "is required: this invitation names nobody",
                )]));
            }
        };
        // Before the insert, as registration does: otherwise a registration of the same
        // address, holding the seat lock and waiting on this insert, would deadlock.
        limits::lock(&mut tx, &tenant.0, Limited::Seats).await?;
        let user = store::insert_user(
            &mut tx,
            NewUser {
                email: &Email::new(&invitation.email),
                name: &name,
                password_hash: &password_hash,
                status: UserStatus::Pending,
            },
        )
        .await
        .map_err(|e| match e {
            identity::StoreError::EmailTaken => already_member(),
            other => other.into(),
        })?;
        // The link came to this address: it is verified, and the user active. A refusal
        // for seats rolls the acceptance back with everything else: the link still works.
        let activated = store::mark_email_verified(&mut tx, user.id).await?;
        limits::ensure_seats(&state, &mut tx, &tenant.0, activated).await?;
        let all_roles = roles::list_roles(&mut tx)
            .await
            .map_err(ApiError::internal)?;
        let granted: Vec<Uuid> = invitation
            .role_ids
            .iter()
            .copied()
            .filter(|id| all_roles.iter().any(|r| r.id == *id))
            .collect();
        roles::set_user_roles(&mut tx, user.id, &granted, invitation.invited_by)
            .await
            .map_err(ApiError::internal)?;
        invitations::record_acceptance(&mut tx, invitation.id, user.id).await?;
        let details = json!({
            "invitation_id": invitation.id,
            "invited_by": invitation.invited_by,
            "role_ids": granted,
        });
        jobs::enqueue(&mut tx, identity::link_emails::welcome(&user)?).await?;
        // A role the tenant requires two-factor authentication of: no session before the
        // enrollment, as at login.
        if let Some(enroll) = mfa_login::enrollment_required_in(&mut tx, user.id, &client).await? {
            audit::record(
                &mut tx,
                "invitation.accepted",
                Some(user.id),
                Some(user.id),
                None,
                &client,
                details,
            )
            .await?;
            tx.commit().await?;
            return Ok(Json(enroll));
        }
        let (session, refresh) =
            store::create_session(&mut tx, user.id, &client, state.settings.jwt.refresh_ttl)
                .await?;
        audit::record(
            &mut tx,
            "invitation.accepted",
            Some(user.id),
            Some(user.id),
            Some(session.id),
            &client,
            details,
        )
        .await?;
        tx.commit().await?;
        Ok(Json(LoginOutcome::Authenticated(token_pair(
            &state,
            tenant_id.0,
            user.id,
            session.id,
            &refresh,
        )?)))
    }
}

/// Whom [`invite_in`] invites.
pub(crate) struct Invitee<'a> {
    /// The address (trimmed).
    pub email: &'a str,
    /// The roles asked for (checked here).
    pub role_ids: &'a [Uuid],
    /// The display name the inviter gives, if any.
    pub name: Option<&'a str>,
    /// Whether the invitation holds a seat until accepted (a user an administrator
    /// creates): checked against the plan here, under the seat lock.
    pub reserves_seat: bool,
}

/// Invites (or refreshes the open invitation of) `invitee` as `me`, in `tx`, and enqueues
/// its email: the one path of `POST /v1/invitations` and `POST /v1/users`. Takes the roles
/// lock; refuses roles granting more than `me` holds (403), an address that already has a
/// user (409 `already_member`) and, for a seat-reserving invitation, a plan without a
/// free seat (402 `plan_limit_reached`). Returns the invitation, whether it is new, and
/// the tenant's roles. The caller audits and commits.
pub(crate) async fn invite_in(
    state: &AppState,
    tx: &mut TenantTx,
    me: &Principal,
    invitee: Invitee<'_>,
) -> ApiResult<(Invitation, bool, Vec<Role>)> {
    let email = invitee.email;
    let (all_roles, held) = lock_for_change(tx, me, Permission::UsersManage).await?;
    let wanted = known_roles(&all_roles, invitee.role_ids)?;
    ensure_holds(
        held,
        allowed_by(&all_roles, &wanted),
        "These roles grant permissions you do not hold",
    )?;
    if store::user_by_email(tx, &Email::new(email))
        .await?
        .is_some()
    {
        return Err(already_member());
    }
    // Refreshing replaces the open invitation's roles: as for resending or revoking it,
    // the caller must hold what they grant.
    let open = invitations::open_for_email(tx, email).await?;
    if let Some(open) = &open {
        ensure_may_handle(held, &all_roles, open)?;
    }
    if invitee.reserves_seat {
        // An open, unexpired reservation of this address already holds its seat.
        let held_already = open
            .as_ref()
            .is_some_and(|o| o.reserves_seat && o.expires_at > Utc::now());
        let adding = u64::from(!held_already);
        limits::ensure_room(state, tx, &me.tenant, Limited::Seats, adding).await?;
    }
    let (invitation, created) = invitations::invite(
        tx,
        NewInvitation {
            email,
            role_ids: &wanted,
            invited_by: me.user_id,
            name: invitee.name,
            reserves_seat: invitee.reserves_seat,
        },
        state.settings.auth.invitation_ttl,
    )
    .await?;
    let job = InvitationEmail {
        invitation_id: invitation.id,
    };
    jobs::enqueue(tx, job.to_job()?).await?;
    Ok((invitation, created, all_roles))
}

/// Refuses (403) refreshing, resending or revoking `invitation` to a caller holding
/// `held`, unless they hold everything its roles grant, as for inviting with them.
fn ensure_may_handle(
    held: PermissionSet,
    all_roles: &[Role],
    invitation: &Invitation,
) -> Result<(), ApiError> {
    ensure_holds(
        held,
        allowed_by(all_roles, &invitation.role_ids),
        "This invitation's roles grant permissions you do not hold",
    )
}

fn already_member() -> ApiError {
    ApiError::new(
        ErrorCode::AlreadyMember,
        "A user of this tenant already has this email address.",
    )
}

fn invitation_invalid() -> ApiError {
    ApiError::new(
        ErrorCode::InvitationInvalid,
        "This invitation link is unknown, already used, replaced, revoked or expired; ask for a new invitation.",
    )
}

fn invitation_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "No open invitation of this tenant has this id.",
    )
}

fn default_limit() -> i64 {
    50
}
