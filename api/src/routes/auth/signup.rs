//! Sign-up: a new organization (tenant) and its owner, in one step.

use std::{sync::Mutex, time::Duration};

use identity::{
    ClientInfo, Email, OpaqueToken, User, UserStatus,
    link_emails::{LinkEmail, LinkPurpose},
    store::{self, NewUser, Session},
};
use jobs::Job;
use poem::{Request, web::Data};
use poem_openapi::{OpenApi, payload::Json};
use rbac::SystemRole;
use serde_json::json;
use tenancy::{BoxFuture, TenancyError, TenantSeed, TenantSlug, TenantTx};

use crate::{
    AppState,
    auth::{
        client_info,
        throttle::{self, Counter},
    },
    error::{ApiError, ApiResult},
    payload::JsonBody,
    routes::{ApiTag, audit, auth::*, users::user_view},
    tenant::publish_change,
};

/// Sign-up endpoints.
pub struct SignupApi;

#[OpenApi(tag = "ApiTag::Auth")]
impl SignupApi {
    /// Sign up an organization.
    ///
    /// Creates the tenant and its owner in one step (all or nothing), sends the owner a
    /// verification email, and logs the owner in. A taken slug is 409 `slug_taken`.
    #[oai(path = "/v1/signup", method = "post", operation_id = "sign_up")]
    async fn signup(
        &self,
        state: Data<&AppState>,
        request: &Request,
        body: JsonBody<SignupRequest>,
    ) -> ApiResult<SignupCreated> {
        let client = client_info(request);
        let key = throttle::key(Counter::Signup, None, client.ip);
        throttle::hit(
            &state.redis,
            &key,
            state.settings.auth.signup_ip_max_requests,
            Duration::from_secs(3600),
        )
        .await?;
        let body = body.0;
        let slug = TenantSlug::parse(&body.tenant_slug).map_err(TenancyError::from)?;
        let password_hash = state.hasher.hash(&body.password).await?;
        let seed = OwnerSeed {
            email: Email::new(&body.email),
            name: body.name.trim().to_owned(),
            password_hash,
            client,
            refresh_ttl: state.settings.jwt.refresh_ttl,
            created: Mutex::new(None),
        };
        let tenant = state
            .db
            .create_tenant_seeded(&slug, &body.tenant_name, &seed)
            .await?;
        publish_change(&state, tenant.id).await;
        let (user, session, refresh) = seed
            .created
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the owner seed did not run")))?;
        tracing::info!(tenant_id = %tenant.id, slug = %tenant.slug, "signed up");
        let mut tx = state.tenant_db.begin(tenant.id).await?;
        let user = user_view(&mut tx, &user).await?;
        tx.commit().await?;
        let tokens = token_pair(&state, tenant.id.0, user.id, session.id, &refresh)?;
        Ok(SignupCreated::Created(Json(SignupResponse {
            tenant: SignupTenant {
                id: tenant.id.0,
                slug: tenant.slug.to_string(),
                name: tenant.name.clone(),
            },
            user,
            tokens,
        })))
    }
}

/// Creates the owner inside the provisioning transaction of a sign-up.
struct OwnerSeed {
    email: Email,
    name: String,
    password_hash: String,
    client: ClientInfo,
    refresh_ttl: Duration,
    created: Mutex<Option<(User, Session, OpaqueToken)>>,
}

impl TenantSeed for OwnerSeed {
    fn name(&self) -> &'static str {
        "owner"
    }

    fn seed<'a>(&'a self, tx: &'a mut TenantTx) -> BoxFuture<'a, Result<(), TenancyError>> {
        Box::pin(async move {
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| TenancyError::Seed {
                seed: "owner",
                source: e,
            };
            let user = store::insert_user(
                tx,
                NewUser {
                    email: &self.email,
                    name: &self.name,
                    password_hash: &self.password_hash,
                    status: UserStatus::Active,
                },
            )
            .await
            .map_err(|e| failed(e.into()))?;
            rbac::store::grant_system_role(tx, user.id, SystemRole::Owner)
                .await
                .map_err(|e| failed(e.into()))?;
            let (session, refresh) =
                store::create_session(tx, user.id, &self.client, self.refresh_ttl)
                    .await
                    .map_err(|e| failed(e.into()))?;
            let link = LinkEmail {
                user_id: user.id,
                purpose: LinkPurpose::VerifyEmail,
            };
            jobs::enqueue(tx, link.to_job().map_err(|e| failed(e.into()))?)
                .await
                .map_err(|e| failed(e.into()))?;
            audit::record(
                tx,
                "signup",
                Some(user.id),
                Some(user.id),
                Some(session.id),
                &self.client,
                json!({}),
            )
            .await
            .map_err(|e| failed(Box::new(e)))?;
            *self.created.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((user, session, refresh));
            Ok(())
        })
    }
}
