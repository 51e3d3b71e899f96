//! The tenant a request addresses: its profile (`GET /v1/tenant`, public, showing more to
//! members who may see more) and its registration settings (`PATCH /v1/tenant`).

use identity::{ClientInfo, Registration, RegistrationPolicy, membership, store::mfa as mfa_store};
use poem::{Request, web::Data};
use poem_openapi::{OpenApi, payload::Json, types::MaybeUndefined};
use rbac::{
    Permission, PermissionSet, SystemRole,
    catalog::NOT_FOR_SELF_REGISTRATION,
    store::{self as roles, RegistrationRole},
};
use serde_json::json;
use sqlx::{FromRow, Row};
use tenancy::{
    Tenant, TenantTx,
    profile::{self, Preferences},
};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, MaybeSignedIn, Principal, client_info, perm},
    error::{ApiError, ApiResult, FieldCode, FieldError},
    payload::JsonBody,
    routes::{
        ApiTag, audit,
        guards::{ensure_holds, lock_for_change},
        tenants::*,
    },
    tenant::publish_change,
};

/// The addressed tenant's endpoints.
pub struct CurrentTenantApi;

#[OpenApi(tag = "ApiTag::Tenants")]
impl CurrentTenantApi {
    /// The tenant this request addresses.
    ///
    /// The tenant comes from the subdomain of the base domain, else from the `X-Tenant`
    /// header (slug or id). Anyone may ask (a login page needs the name and whether it may
    /// offer registration); with an access token, members holding `billing:read` also see
    /// the plan and storage use, and those holding `tenant:manage` the registration
    /// settings. An access token that is sent must be valid.
    #[oai(
        path = "/v1/tenant",
        method = "get",
        operation_id = "get_current_tenant"
    )]
    async fn get_current_tenant(
        &self,
        state: Data<&AppState>,
        caller: MaybeSignedIn,
    ) -> ApiResult<Json<TenantProfile>> {
        let mut tx = caller.begin(&state).await?;
        let tenant = &caller.tenant;
        let profile = profile(&state, &mut tx, tenant, caller.granted()).await?;
        tx.commit().await?;
        Ok(Json(profile))
    }

    /// Change the tenant's name, settings and registration settings.
    ///
    /// Sets the display name, the locale and time zone, who may register themselves
    /// (`invite_only`, `open`, or `domain` with its domains) and the role they get, and the
    /// roles that must use two-factor authentication; all in one transaction. A
    /// registration change takes effect with the next registration, a two-factor one with
    /// the next login. Audited as `tenant.settings_changed` (name, locale, time zone,
    /// `mfa_required_for`) and
    /// `tenant.registration_changed`. Answers with the profile as the caller sees it.
    #[oai(
        path = "/v1/tenant",
        method = "patch",
        operation_id = "update_current_tenant"
    )]
    async fn update_current_tenant(
        &self,
        state: Data<&AppState>,
        request: &Request,
        auth: Authorized<perm::TenantManage>,
        body: JsonBody<UpdateCurrentTenant>,
    ) -> ApiResult<Json<TenantProfile>> {
        let me = auth.principal;
        let client = client_info(request);
        let body = body.0;
        let domains = body.domains().map_err(ApiError::validation)?;
        // The name it had, when this renames the tenant.
        let (mut tx, tenant, renamed_from) = match body.name.as_deref() {
            Some(name) => {
                let (tx, tenant, previous) = state.db.begin_renaming(me.tenant.id, name).await?;
                let renamed_from = (previous != tenant.name).then_some(previous);
                (tx, tenant, renamed_from)
            }
            None => (me.begin(&state).await?, Tenant::clone(&me.tenant), None),
        };
        // Under the roles lock: the role judged here cannot change before this commits.
        let (all_roles, held) = lock_for_change(&mut tx, &me, Permission::TenantManage).await?;
        let rename = renamed_from
            .as_deref()
            .map(|from| (from, tenant.name.as_str()));
        let mfa_roles = body
            .mfa_required_for
            .as_deref()
            .map(|ids| judge_mfa_roles(&all_roles, ids))
            .transpose()?;
        change_preferences(&mut tx, &me, &client, &body, rename, mfa_roles).await?;
        let before = membership::registration(&mut tx).await?;
        let mut after = before.clone();
        if let Some(policy) = body.registration_policy {
            after.policy = policy.into();
        }
        if let Some(domains) = domains {
            after.domains = domains;
        }
        match body.registration_role_id {
            MaybeUndefined::Value(id) => {
                judge_registration_role(&all_roles, held, id)?;
                after.role_id = Some(id);
            }
            MaybeUndefined::Null => after.role_id = None,
            MaybeUndefined::Undefined => {}
        }
        if after.policy == RegistrationPolicy::Domain && after.domains.is_empty() {
            return Err(ApiError::validation(vec![FieldError::new(
                "registration_domains",
                FieldCode::Required,
                "the `domain` policy needs at least one domain",
            )]));
        }
        if after != before {
            membership::set_registration(&mut tx, &after).await?;
            audit::record(
                &mut tx,
                "tenant.registration_changed",
                Some(me.user_id),
                None,
                Some(me.session_id),
                &client,
                json!({ "from": registration_json(&before), "to": registration_json(&after) }),
            )
            .await?;
        }
        let profile = profile(&state, &mut tx, &tenant, held).await?;
        tx.commit().await?;
        if renamed_from.is_some() {
            // Every instance's resolver holds the old name.
            publish_change(&state, tenant.id).await;
        }
        Ok(Json(profile))
    }
}

/// Applies the body's locale, time zone and `mfa_required_for` (`mfa_roles`, already
/// judged), auditing them with the rename (from, to) already made in `tx` as one
/// `tenant.settings_changed`. A time zone PostgreSQL does not know is a 422.
async fn change_preferences(
    tx: &mut TenantTx,
    me: &Principal,
    client: &ClientInfo,
    body: &UpdateCurrentTenant,
    rename: Option<(&str, &str)>,
    mfa_roles: Option<&[Uuid]>,
) -> ApiResult<()> {
    let mfa_before = mfa_store::mfa_required_for(tx).await?;
    let mfa_change = mfa_roles.filter(|after| *after != mfa_before.as_slice());
    if let Some(after) = mfa_change {
        mfa_store::set_mfa_required_for(tx, after).await?;
    }
    let before = profile::preferences(tx).await?;
    let after = Preferences {
        locale: body.locale.clone().unwrap_or_else(|| before.locale.clone()),
        timezone: body
            .timezone
            .clone()
            .unwrap_or_else(|| before.timezone.clone()),
    };
    if after.timezone != before.timezone && !profile::is_time_zone(tx, &after.timezone).await? {
        return Err(ApiError::validation(vec![FieldError::new(
            "timezone",
            FieldCode::Invalid,
            "not a time zone of the IANA database (such as `Europe/Lisbon` or `UTC`)",
        )]));
    }
    if after == before && rename.is_none() && mfa_change.is_none() {
        return Ok(());
    }
    if after != before {
        profile::set_preferences(tx, &after).await?;
    }
    let mut from = json!({ "locale": before.locale, "timezone": before.timezone });
    let mut to = json!({ "locale": after.locale, "timezone": after.timezone });
    if let Some((old_name, new_name)) = rename {
        from["name"] = json!(old_name);
        to["name"] = json!(new_name);
    }
    if let Some(mfa_after) = mfa_change {
        from["mfa_required_for"] = json!(mfa_before);
        to["mfa_required_for"] = json!(mfa_after);
    }
    audit::record(
        tx,
        "tenant.settings_changed",
        Some(me.user_id),
        None,
        Some(me.session_id),
        client,
        json!({ "from": from, "to": to }),
    )
    .await?;
    Ok(())
}

/// The profile of `tenant` as a caller holding `granted` may see it: one query for an
/// anonymous visitor (the login page's), more only for what a member may see.
async fn profile(
    state: &AppState,
    tx: &mut TenantTx,
    tenant: &Tenant,
    granted: PermissionSet,
) -> ApiResult<TenantProfile> {
    let row = sqlx::query(&format!(
        "select locale, timezone, {} from settings",
        membership::REGISTRATION_COLUMNS
    ))
    .fetch_one(&mut **tx)
    .await?;
    let locale: String = row.try_get("locale")?;
    let timezone: String = row.try_get("timezone")?;
    let registration = &Registration::from_row(&row)?;
    let manager = granted.contains(Permission::TenantManage);
    let role_id = match (manager, registration.role_id) {
        (false, _) => None,
        (true, Some(id)) => Some(id),
        (true, None) => Some(
            roles::system_role_id(tx, SystemRole::Viewer)
                .await
                .map_err(ApiError::internal)?,
        ),
    };
    let mfa_required_for = if manager {
        Some(mfa_store::mfa_required_for(tx).await?)
    } else {
        None
    };
    let storage = if granted.contains(Permission::BillingRead) {
        let (used_bytes, files) = files::store::usage(tx).await?;
        let limits = state.settings.plans.limits(&tenant.plan);
        Some(StorageUsage {
            used_bytes,
            files,
            limit_bytes: limits.storage_bytes.as_u64(),
        })
    } else {
        None
    };
    Ok(TenantProfile {
        id: tenant.id.0,
        slug: tenant.slug.to_string(),
        name: tenant.name.clone(),
        status: tenant.status.into(),
        settings: TenantSettings { locale, timezone },
        registration_policy: registration.policy.into(),
        registration_domains: manager.then(|| registration.domains.clone()),
        registration_role_id: role_id,
        mfa_required_for,
        plan: granted
            .contains(Permission::BillingRead)
            .then(|| tenant.plan.clone()),
        storage,
    })
}

/// A 422 unless role `id` may be the role of self-registered users, and a 403 unless the
/// caller (holding `held`) holds everything it allows: otherwise registering a second
/// account would be a way to get more than one has.
fn judge_registration_role(
    all_roles: &[rbac::Role],
    held: PermissionSet,
    id: Uuid,
) -> Result<(), ApiError> {
    match roles::registration_role(all_roles, id) {
        RegistrationRole::Allowed(allows) => {
            ensure_holds(held, allows, "This role grants permissions you do not hold")
        }
        RegistrationRole::NotFound => Err(ApiError::validation(vec![FieldError::new(
            "registration_role_id",
            FieldCode::NotFound,
            "no role of this tenant has this id",
        )])),
        RegistrationRole::TooPowerful(forbidden) => {
            Err(ApiError::validation(vec![FieldError::new(
                "registration_role_id",
                FieldCode::TooPowerful,
                format!(
                    "must be a role below admin: not owner or admin, and allowing none of {}{}",
                    NOT_FOR_SELF_REGISTRATION.names().join(", "),
                    if forbidden.is_empty() {
                        String::new()
                    } else {
                        format!(" (this one allows {})", forbidden.names().join(", "))
                    }
                ),
            )]))
        }
    }
}

/// The roles of `ids`, each a role of this tenant (a 422 naming the first that is not).
fn judge_mfa_roles<'a>(all_roles: &[rbac::Role], ids: &'a [Uuid]) -> ApiResult<&'a [Uuid]> {
    if let Some(i) = ids
        .iter()
        .position(|id| !all_roles.iter().any(|r| r.id == *id))
    {
        return Err(ApiError::validation(vec![FieldError::new(
            format!("mfa_required_for[{i}]"),
            FieldCode::NotFound,
            "no role of this tenant has this id",
        )]));
    }
    Ok(ids)
}

fn registration_json(registration: &Registration) -> serde_json::Value {
    json!({
        "policy": registration.policy.as_str(),
        "domains": registration.domains,
        "role_id": registration.role_id,
    })
}
