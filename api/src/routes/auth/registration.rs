//! Self-registration of a tenant's members and the verification of their address.

use identity::{
    Email, OpaqueToken, UserStatus,
    link_emails::{LinkEmail, LinkPurpose, VerificationRequested},
    membership,
    store::{self, NewUser, TokenPurpose},
};
use jobs::Job;
use poem::{Request, web::Data};
use poem_openapi::{OpenApi, payload::Json};
use rbac::{SystemRole, store::RegistrationRole};
use serde_json::json;
use tenancy::TenantTx;
use uuid::Uuid;

use crate::{
    AppState,
    auth::client_info,
    error::{ApiError, ApiResult},
    limits::{self, Limited},
    payload::JsonBody,
    routes::{ApiTag, audit, auth::*, users::user_view},
    tenant::CurrentTenant,
};

/// Registration endpoints.
pub struct RegistrationApi;

#[OpenApi(tag = "ApiTag::Auth")]
impl RegistrationApi {
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
        tenant: CurrentTenant,
        body: JsonBody<RegisterRequest>,
    ) -> ApiResult<AcceptedResponse> {
        let client = recovery_throttle(&state, request, &tenant).await?;
        let body = body.0;
        let email = Email::new(&body.email);
        // Hashed whether or not the address is taken: both answers take the same time.
        let password_hash = state.hasher.hash(&body.password).await?;
        let mut tx = tenant.begin(&state).await?;
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
                let pending = PendingUser {
                    email: &email,
                    name: body.name.trim(),
                    password_hash: &password_hash,
                    role: registration.role_id,
                };
                pending.create(&mut tx, &client).await?;
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
        tenant: CurrentTenant,
        body: JsonBody<VerifyEmailRequest>,
    ) -> ApiResult<Json<UserView>> {
        let client = client_info(request);
        let token = OpaqueToken::parse(&body.0.token).ok_or_else(link_invalid)?;
        let mut tx = tenant.begin(&state).await?;
        let user = store::consume_user_token(&mut tx, &token, TokenPurpose::VerifyEmail)
            .await?
            .ok_or_else(link_invalid)?;
        let activated = store::mark_email_verified(&mut tx, user).await?;
        limits::ensure_seats(&state, &mut tx, &tenant.0, activated).await?;
        audit::record(
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
        // Welcomed once, when the address is first verified (the user becomes active).
        if activated.count() > 0 {
            jobs::enqueue(&mut tx, identity::link_emails::welcome(&user)?).await?;
        }
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
        tenant: CurrentTenant,
        body: JsonBody<EmailRequest>,
    ) -> ApiResult<AcceptedResponse> {
        request_link(
            &state,
            request,
            &tenant,
            &body.0.email,
            |email| VerificationRequested { email },
            "If a pending account has this address, a new verification link is on its way.",
        )
        .await
    }
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

/// A self-registered user, made `pending` until they verify their address.
struct PendingUser<'a> {
    email: &'a Email,
    name: &'a str,
    password_hash: &'a str,
    /// The tenant's registration role, if it names one.
    role: Option<Uuid>,
}

impl PendingUser<'_> {
    /// Makes the user in `tx` with their role, queues the verification link, audits it.
    async fn create(self, tx: &mut TenantTx, client: &ClientInfo) -> ApiResult<()> {
        let user = store::insert_user(
            tx,
            NewUser {
                email: self.email,
                name: self.name,
                password_hash: self.password_hash,
                status: UserStatus::Pending,
            },
        )
        .await?;
        grant_registration_role(tx, user.id, self.role).await?;
        // The job mints the link when it sends it: no payload holds a secret.
        jobs::enqueue(
            tx,
            LinkEmail {
                user_id: user.id,
                purpose: LinkPurpose::VerifyEmail,
            }
            .to_job()?,
        )
        .await?;
        audit::record(
            tx,
            "user.registered",
            Some(user.id),
            Some(user.id),
            None,
            client,
            json!({}),
        )
        .await?;
        Ok(())
    }
}
