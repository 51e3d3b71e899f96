//! Tenants: the resolved tenant's profile (`GET /v1/tenant`) and its settings
//! (`PATCH /v1/tenant`), and the platform operator's registry (`/v1/admin/tenants`,
//! authenticated by platform API keys).
//!
//! The profile is public, for a login page: anyone naming the tenant sees its id, slug,
//! name, settings and registration policy. What else it shows depends on who asks: the
//! plan and storage use to members holding `billing:read`, the registration domains and
//! role to members holding `tenant:manage`.
//!
//! The handlers live in [`current`] (the addressed tenant) and [`admin`] (the registry);
//! this module holds their request and response types.

pub mod admin;
pub mod current;

use chrono::{DateTime, Utc};
use identity::{
    RegistrationPolicy,
    membership::{self, MAX_DOMAINS},
};
use poem_openapi::{ApiResponse, Enum, Object, payload::Json, types::MaybeUndefined};
use serde::Deserialize;
use tenancy::{Tenant, TenantSlug, TenantStatus};
use uuid::Uuid;

use crate::{
    error::{FieldCode, FieldError},
    payload::{Validate, all_valid},
    routes::checks::check_some_change,
};

/// The tenant endpoints: the addressed tenant's, then the operator's registry.
pub type TenantsApi = (current::CurrentTenantApi, admin::AdminTenantsApi);

/// The value of [`TenantsApi`].
pub const TENANTS_API: TenantsApi = (current::CurrentTenantApi, admin::AdminTenantsApi);

/// Lifecycle state of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TenantStatusView {
    /// Serves requests.
    Active,
    /// Keeps its data; its requests are refused with 403 `tenant_suspended`.
    Suspended,
    /// Unreachable; its schema and role are dropped after the grace period.
    Deleted,
}

impl From<TenantStatusView> for TenantStatus {
    fn from(status: TenantStatusView) -> Self {
        match status {
            TenantStatusView::Active => Self::Active,
            TenantStatusView::Suspended => Self::Suspended,
            TenantStatusView::Deleted => Self::Deleted,
        }
    }
}

impl From<SettableStatus> for TenantStatus {
    fn from(status: SettableStatus) -> Self {
        match status {
            SettableStatus::Active => Self::Active,
            SettableStatus::Suspended => Self::Suspended,
        }
    }
}

impl From<TenantStatus> for TenantStatusView {
    fn from(status: TenantStatus) -> Self {
        match status {
            TenantStatus::Active => Self::Active,
            TenantStatus::Suspended => Self::Suspended,
            TenantStatus::Deleted => Self::Deleted,
        }
    }
}

/// Settings the tenant keeps in its own schema.
#[derive(Debug, Object)]
pub struct TenantSettings {
    /// BCP 47 language tag.
    pub locale: String,
    /// IANA time zone.
    pub timezone: String,
}

/// Who may register themselves in a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RegistrationPolicyView {
    /// Nobody: members join through invitations (`POST /v1/invitations`).
    InviteOnly,
    /// Anyone, who then verifies their address.
    Open,
    /// Addresses of the listed domains only, who then verify their address.
    Domain,
}

impl From<RegistrationPolicy> for RegistrationPolicyView {
    fn from(policy: RegistrationPolicy) -> Self {
        match policy {
            RegistrationPolicy::InviteOnly => Self::InviteOnly,
            RegistrationPolicy::Open => Self::Open,
            RegistrationPolicy::Domain => Self::Domain,
        }
    }
}

impl From<RegistrationPolicyView> for RegistrationPolicy {
    fn from(policy: RegistrationPolicyView) -> Self {
        match policy {
            RegistrationPolicyView::InviteOnly => Self::InviteOnly,
            RegistrationPolicyView::Open => Self::Open,
            RegistrationPolicyView::Domain => Self::Domain,
        }
    }
}

/// The profile of the tenant a request addresses. Public members are always there; the
/// others only for a signed-in member holding the permission each names.
#[derive(Debug, Object)]
pub struct TenantProfile {
    /// Tenant id (usable in `X-Tenant`).
    pub id: Uuid,
    /// Slug (subdomain; usable in `X-Tenant`).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Always `active` here: other tenants are not served.
    pub status: TenantStatusView,
    /// Tenant-owned settings.
    pub settings: TenantSettings,
    /// Who may register themselves (`POST /v1/auth/register`).
    pub registration_policy: RegistrationPolicyView,
    /// The domains the `domain` policy admits (lower-case ASCII). Only with `tenant:manage`.
    #[oai(skip_serializing_if_is_none)]
    pub registration_domains: Option<Vec<String>>,
    /// The role self-registered users get. Only with `tenant:manage`.
    #[oai(skip_serializing_if_is_none)]
    pub registration_role_id: Option<Uuid>,
    /// The roles whose holders must use two-factor authentication. Only with
    /// `tenant:manage`.
    #[oai(skip_serializing_if_is_none)]
    pub mfa_required_for: Option<Vec<Uuid>>,
    /// Billing plan. Only with `billing:read`.
    #[oai(skip_serializing_if_is_none)]
    pub plan: Option<String>,
    /// File storage in use, and what the plan allows. Only with `billing:read`.
    #[oai(skip_serializing_if_is_none)]
    pub storage: Option<StorageUsage>,
}

/// Changes to the tenant's own settings; absent fields stay as they are.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateCurrentTenant {
    /// Display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    #[serde(default)]
    pub name: Option<String>,
    /// BCP 47 language tag of at most 35 characters: a 2–3 letter lower-case language,
    /// then subtags of 2–8 letters or digits (`en`, `pt-BR`, `zh-Hant-TW`).
    #[oai(validator(pattern = "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"))]
    #[serde(default)]
    pub locale: Option<String>,
    /// IANA time zone of 1 to 64 characters (`Europe/Lisbon`, `America/New_York`, `UTC`),
    /// as PostgreSQL's time zone database names it.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Who may register themselves. `domain` needs at least one domain.
    #[serde(default)]
    pub registration_policy: Option<RegistrationPolicyView>,
    /// The domains `domain` admits, replacing the list: at most 50 names such as
    /// `example.com` (compared exactly, subdomains not included; international names are
    /// stored in their ASCII `xn--` form, case does not matter).
    #[oai(validator(max_items = 50))]
    #[serde(default)]
    pub registration_domains: Option<Vec<String>>,
    /// The role self-registered users get (`null`: `viewer`, the default). It must be
    /// below admin: neither `owner` nor `admin`, and allowing (itself or through its
    /// parents) none of `users:manage`, `roles:manage`, `tenant:manage`,
    /// `billing:manage`; and you must hold everything it allows.
    #[serde(default)]
    pub registration_role_id: MaybeUndefined<Uuid>,
    /// The roles whose holders must use two-factor authentication, replacing the list
    /// (`[]`: nobody must), at most 64 role ids of this tenant. A holder without an
    /// authenticator can then log in only to enroll one (`mfa_enrollment_required`).
    #[oai(validator(max_items = 64))]
    #[serde(default)]
    pub mfa_required_for: Option<Vec<Uuid>>,
}

/// Most roles `mfa_required_for` may list (the schema's `settings_mfa_required_for_count`).
pub const MAX_MFA_REQUIRED_FOR: usize = 64;

// The schema's `maxItems` of `registration_domains` and the lengths the descriptions of
// `locale` and `timezone` state (attributes take literals only).
const _: () = assert!(
    MAX_DOMAINS == 50
        && tenancy::profile::MAX_LOCALE_LENGTH == 35
        && tenancy::profile::MAX_TIME_ZONE_LENGTH == 64,
    "update maxItems of `registration_domains`, or the lengths of `locale` or `timezone`"
);

impl UpdateCurrentTenant {
    /// The domains, normalized and deduplicated (in the given order); per-item errors.
    fn domains(&self) -> Result<Option<Vec<String>>, Vec<FieldError>> {
        let Some(raw) = &self.registration_domains else {
            return Ok(None);
        };
        if raw.len() > MAX_DOMAINS {
            return Err(vec![FieldError::new(
                "registration_domains",
                FieldCode::TooLong,
                format!("at most {MAX_DOMAINS} domains"),
            )]);
        }
        let mut domains = Vec::new();
        let mut errors = Vec::new();
        for (i, domain) in raw.iter().enumerate() {
            match membership::normalize_domain(domain) {
                Ok(domain) if !domains.contains(&domain) => domains.push(domain),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(
                    format!("registration_domains[{i}]"),
                    match e {
                        membership::DomainError::TooLong => FieldCode::TooLong,
                        membership::DomainError::Invalid => FieldCode::Invalid,
                    },
                    e.to_string(),
                )),
            }
        }
        all_valid(errors).map(|()| Some(domains))
    }
}

impl Validate for UpdateCurrentTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_some_change(
            &mut errors,
            &[
                ("name", self.name.is_some()),
                ("locale", self.locale.is_some()),
                ("timezone", self.timezone.is_some()),
                ("registration_policy", self.registration_policy.is_some()),
                ("registration_domains", self.registration_domains.is_some()),
                (
                    "registration_role_id",
                    !self.registration_role_id.is_undefined(),
                ),
                ("mfa_required_for", self.mfa_required_for.is_some()),
            ],
        );
        if let Some(roles) = &self.mfa_required_for {
            if roles.len() > MAX_MFA_REQUIRED_FOR {
                errors.push(FieldError::new(
                    "mfa_required_for",
                    FieldCode::TooLong,
                    format!("at most {MAX_MFA_REQUIRED_FOR} roles"),
                ));
            } else if let Some(i) = (1..roles.len()).find(|&i| roles[..i].contains(&roles[i])) {
                errors.push(FieldError::new(
                    format!("mfa_required_for[{i}]"),
                    FieldCode::Duplicate,
                    "this role is listed twice",
                ));
            }
        }
        if let Some(name) = &self.name {
            check_tenant_name(&mut errors, name);
        }
        if let Some(tz) = &self.timezone {
            if tz.is_empty() || tz.len() > tenancy::profile::MAX_TIME_ZONE_LENGTH {
                errors.push(FieldError::new(
                    "timezone",
                    FieldCode::Length,
                    "must be 1 to 64 characters",
                ));
            } else if !tenancy::profile::is_time_zone_shaped(tz) {
                errors.push(FieldError::new(
                    "timezone",
                    FieldCode::Invalid,
                    "not a time zone of the IANA database (such as `Europe/Lisbon` or `UTC`)",
                ));
            }
        }
        if let Some(locale) = &self.locale
            && !tenancy::profile::is_locale(locale)
        {
            errors.push(FieldError::new(
                "locale",
                FieldCode::Invalid,
                "a BCP 47 language tag such as `en` or `pt-BR`",
            ));
        }
        all_valid(errors)?;
        self.domains().map(|_| ())
    }
}

/// A 422's field error unless `name` may be a tenant's display name.
fn check_tenant_name(errors: &mut Vec<FieldError>, name: &str) {
    if tenancy::validate_name(name).is_err() {
        errors.push(FieldError::new(
            "name",
            FieldCode::Length,
            "must be 1 to 200 characters",
        ));
    }
}

/// File storage of a tenant.
#[derive(Debug, Object)]
pub struct StorageUsage {
    /// Bytes of live files.
    pub used_bytes: i64,
    /// Live files.
    pub files: i64,
    /// Bytes the plan allows.
    pub limit_bytes: u64,
}

/// A tenant as the platform operator sees it.
#[derive(Debug, Object)]
pub struct AdminTenant {
    /// Tenant id.
    pub id: Uuid,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Lifecycle state.
    pub status: TenantStatusView,
    /// Billing plan.
    pub plan: String,
    /// The tenant's PostgreSQL schema (and role), derived from its id.
    pub schema: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When a deleted tenant's schema and role will be dropped.
    pub purge_after: Option<DateTime<Utc>>,
}

impl From<&Tenant> for AdminTenant {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.0,
            slug: t.slug.to_string(),
            name: t.name.clone(),
            status: t.status.into(),
            plan: t.plan.clone(),
            schema: t.schema_name(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            deleted_at: t.deleted_at,
            purge_after: t.purge_after,
        }
    }
}

/// A new tenant.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Lowercase DNS label, 3 to 63 characters (letters, digits, inner hyphens), not reserved
    /// (`admin`, `api`, `www`, `public`, …) and not a UUID.
    #[oai(validator(
        min_length = 3,
        max_length = 63,
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    ))]
    pub slug: String,
    /// Display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: String,
}

impl Validate for CreateTenant {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(reason) = TenantSlug::parse(&self.slug) {
            errors.push(FieldError::new(
                "slug",
                FieldCode::Invalid,
                format!("slug {reason}"),
            ));
        }
        check_tenant_name(&mut errors, &self.name);
        all_valid(errors)
    }
}

/// Status a tenant can be set to (deletion has its own operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SettableStatus {
    /// Serve the tenant again.
    Active,
    /// Refuse the tenant's requests, keeping its data.
    Suspended,
}

/// Changes to a tenant.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// New status.
    pub status: Option<SettableStatus>,
    /// New display name: 1 to 200 characters once surrounding whitespace is trimmed, without
    /// control characters.
    pub name: Option<String>,
}

impl Validate for UpdateTenant {
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
            check_tenant_name(&mut errors, name);
        }
        all_valid(errors)
    }
}

/// A page of tenants.
#[derive(Debug, Object)]
pub struct TenantPage {
    /// Tenants ordered by slug.
    pub items: Vec<AdminTenant>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Answer to a tenant creation.
#[derive(ApiResponse)]
pub enum TenantCreated {
    /// Provisioned: schema, role, migrations and seed data are in place.
    #[oai(status = 201)]
    Created(Json<AdminTenant>, #[oai(header = "Location")] String),
}
