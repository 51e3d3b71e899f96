//! Tenant identity and the validated values around it.
//!
//! A tenant's schema and role names are derived from its [`TenantId`] (a UUID, so only hex
//! digits ever reach SQL), never from a slug or any other request text.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A tenant's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Uuid);

impl TenantId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Name of the tenant's schema and of its role: `t_<32 hex digits>`.
    pub fn schema_name(&self) -> String {
        format!("t_{}", self.0.simple())
    }

    /// The schema name as a quoted SQL identifier. Safe to splice into SQL: it holds only
    /// `t_`, hex digits and the quotes.
    pub(crate) fn quoted_ident(&self) -> String {
        format!("\"{}\"", self.schema_name())
    }
}

impl From<Uuid> for TenantId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a slug was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    /// Fewer than 3 or more than 63 characters.
    #[error("must be 3 to 63 characters long")]
    Length,
    /// Characters outside `a-z`, `0-9` and `-`, or a hyphen at either end.
    #[error("must be lowercase letters, digits and inner hyphens (a DNS label)")]
    Format,
    /// A name the platform keeps for itself.
    #[error("is reserved")]
    Reserved,
    /// Reads as a tenant id (`X-Tenant` takes ids and slugs alike).
    #[error("must not look like a tenant id")]
    LooksLikeId,
}

/// Slugs that would collide with the platform's own hosts, schemas or routes.
const RESERVED_SLUGS: &[&str] = &[
    "admin",
    "api",
    "app",
    "assets",
    "auth",
    "billing",
    "canopy",
    "cdn",
    "control",
    "dashboard",
    "default",
    "docs",
    "ftp",
    "health",
    "help",
    "imap",
    "information-schema",
    "internal",
    "localhost",
    "mail",
    "metrics",
    "ns1",
    "ns2",
    "pg-catalog",
    "pg-toast",
    "platform",
    "pop",
    "pop3",
    "postgres",
    "public",
    "root",
    "shared",
    "smtp",
    "static",
    "status",
    "support",
    "system",
    "tenant",
    "tenants",
    "test",
    "webhooks",
    "www",
];

/// A tenant's slug: a lowercase DNS label of 3 to 63 characters, not reserved. It names the
/// tenant's subdomain and may appear in `X-Tenant`; it never reaches SQL as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantSlug(String);

impl TenantSlug {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, SlugError> {
        if !(3..=63).contains(&raw.len()) {
            return Err(SlugError::Length);
        }
        let bytes = raw.as_bytes();
        let allowed = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if !allowed || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(SlugError::Format);
        }
        if RESERVED_SLUGS.contains(&raw) {
            return Err(SlugError::Reserved);
        }
        if Uuid::parse_str(raw).is_ok() {
            return Err(SlugError::LooksLikeId);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantSlug {
    type Err = SlugError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TenantSlug {
    type Error = SlugError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    /// Serves requests.
    Active,
    /// Exists, keeps its data, answers 403.
    Suspended,
    /// Unreachable, waiting for its schema and role to be purged.
    Deleted,
}

crate::text_enum!(TenantStatus, "tenant status" {
    Active => "active", Suspended => "suspended", Deleted => "deleted"
});

/// A tenant as the control plane knows it (a row of `public.tenants`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Tenant {
    /// Id; its schema and role are `t_<id>`.
    #[sqlx(try_from = "Uuid")]
    pub id: TenantId,
    /// Subdomain and `X-Tenant` name.
    #[sqlx(try_from = "String")]
    pub slug: TenantSlug,
    /// Display name.
    pub name: String,
    /// Lifecycle state.
    #[sqlx(try_from = "String")]
    pub status: TenantStatus,
    /// Billing plan.
    pub plan: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Last change to this record.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted, if it was.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When a deleted tenant's schema and role will be dropped.
    pub purge_after: Option<DateTime<Utc>>,
}

impl Tenant {
    /// The tenant's schema (and role) name.
    pub fn schema_name(&self) -> String {
        self.id.schema_name()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hostile_and_malformed_slugs_are_refused() {
        for bad in [
            "a,b",
            "x\";drop",
            "../",
            "ab",
            "-abc",
            "abc-",
            "Acme",
            "acme corp",
            "ümlaut",
            "a_b",
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad}");
        }
        for reserved in ["public", "admin", "www", "api", "pg-catalog"] {
            assert_eq!(TenantSlug::parse(reserved), Err(SlugError::Reserved));
        }
        assert_eq!(TenantSlug::parse(&"a".repeat(64)), Err(SlugError::Length));
        assert!(TenantSlug::parse(&"a".repeat(63)).is_ok());
        assert!(TenantSlug::parse("acme-42").is_ok());
        assert_eq!(
            TenantSlug::parse("0193a4c2-6f1e-7c3a-9d2b-5e8f1a7b3c4d"),
            Err(SlugError::LooksLikeId)
        );
        assert_eq!(
            TenantSlug::parse("0193a4c26f1e7c3a9d2b5e8f1a7b3c4d"),
            Err(SlugError::LooksLikeId)
        );
    }

    #[test]
    fn schema_name_is_derived_from_the_id() {
        let id = TenantId(Uuid::parse_str("0193a4c2-6f1e-7c3a-9d2b-5e8f1a7b3c4d").expect("uuid"));
        assert_eq!(id.schema_name(), "t_0193a4c26f1e7c3a9d2b5e8f1a7b3c4d");
        assert_eq!(id.quoted_ident(), "\"t_0193a4c26f1e7c3a9d2b5e8f1a7b3c4d\"");
    }

    proptest! {
        #[test]
        fn accepted_slugs_are_dns_labels(raw in "\\PC{0,70}") {
            if let Ok(slug) = TenantSlug::parse(&raw) {
                let s = slug.as_str();
                prop_assert!((3..=63).contains(&s.len()));
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                prop_assert!(!s.starts_with('-') && !s.ends_with('-'));
            }
        }

        #[test]
        fn dns_labels_are_accepted_unless_reserved(raw in "[a-z0-9][a-z0-9-]{1,61}[a-z0-9]") {
            let parsed = TenantSlug::parse(&raw);
            let expected = !RESERVED_SLUGS.contains(&raw.as_str()) && Uuid::parse_str(&raw).is_err();
            prop_assert_eq!(parsed.is_ok(), expected);
        }
    }
}
