//! Who may join a tenant by registering themselves: its registration policy.
//!
//! The policy is tenant data, so it lives on the tenant's own `settings` row, not on the
//! control plane's `tenants` row that the in-process tenant cache holds: `register` reads
//! it inside the very transaction that would create the user (one more statement, no
//! extra round trip), so a policy change is in force for the next registration on every
//! instance without any cache to invalidate, and `GET /v1/tenant` reads it with the other
//! settings in the query it already makes.
//!
//! * `invite_only` (the default): nobody registers; members come through invitations.
//! * `open`: anyone registers (and verifies their address).
//! * `domain`: only addresses of the listed domains register.
//!
//! Self-registered users get the tenant's registration role (null: the system role
//! `viewer`); which roles qualify is decided by `rbac::store::registration_role`.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// Most domains a `domain` policy may list.
pub const MAX_DOMAINS: usize = 50;

/// Longest domain name (in its ASCII form), as DNS allows.
pub const MAX_DOMAIN_LENGTH: usize = 253;

/// Who may register themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RegistrationPolicy {
    /// Nobody: members join through invitations only.
    #[default]
    InviteOnly,
    /// Anyone.
    Open,
    /// Addresses of the listed domains only.
    Domain,
}

tenancy::text_enum!(RegistrationPolicy, "registration policy" {
    InviteOnly => "invite_only", Open => "open", Domain => "domain"
});

/// Why a domain is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Longer than [`MAX_DOMAIN_LENGTH`] in ASCII form.
    #[error("must be at most {MAX_DOMAIN_LENGTH} characters (in its ASCII form)")]
    TooLong,
    /// Not a domain name.
    #[error(
        "must be a domain name such as example.com: two or more labels of letters, digits and inner hyphens"
    )]
    Invalid,
}

/// The form domains are stored and compared in: trimmed, lower-case, and converted to
/// ASCII by IDNA (UTS 46, so `Bücher.Example` becomes `xn--bcher-kva.example`); two or
/// more labels of 1 to 63 letters, digits and inner hyphens, the last not all digits.
pub fn normalize_domain(raw: &str) -> Result<String, DomainError> {
    let raw = raw.trim();
    // IDNA never shrinks a name below a quarter of its length: refuse huge input early.
    if raw.len() > 4 * MAX_DOMAIN_LENGTH {
        return Err(DomainError::TooLong);
    }
    let ascii = idna::domain_to_ascii(raw).map_err(|_| DomainError::Invalid)?;
    if ascii.len() > MAX_DOMAIN_LENGTH {
        return Err(DomainError::TooLong);
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    let label_ok = |label: &&str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let top_ok = labels
        .last()
        .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()));
    if labels.len() < 2 || !labels.iter().all(label_ok) || !top_ok {
        return Err(DomainError::Invalid);
    }
    Ok(ascii)
}

/// The domain of an email address, normalized as [`normalize_domain`] does; `None` when
/// the address has none that normalizes.
pub fn email_domain(email: &str) -> Option<String> {
    let (_, domain) = email.trim().rsplit_once('@')?;
    normalize_domain(domain).ok()
}

/// A tenant's registration settings (read from a `settings` row holding
/// [`REGISTRATION_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Registration {
    /// Who may register.
    #[sqlx(rename = "registration_policy", try_from = "String")]
    pub policy: RegistrationPolicy,
    /// The domains of the `domain` policy, normalized (kept, unused, under other policies).
    #[sqlx(rename = "registration_domains")]
    pub domains: Vec<String>,
    /// The role self-registered users get; `None`: the system role `viewer`.
    #[sqlx(rename = "registration_role_id")]
    pub role_id: Option<Uuid>,
}

impl Registration {
    /// Whether the owner of `email` may register themselves.
    pub fn admits(&self, email: &str) -> bool {
        match self.policy {
            RegistrationPolicy::InviteOnly => false,
            RegistrationPolicy::Open => true,
            RegistrationPolicy::Domain => {
                email_domain(email).is_some_and(|domain| self.domains.contains(&domain))
            }
        }
    }
}

/// The columns of `settings` [`Registration`]'s `sqlx::FromRow` reads, for a caller that
/// selects them with other settings in one statement.
pub const REGISTRATION_COLUMNS: &str =
    "registration_policy, registration_domains, registration_role_id";

/// The tenant's registration settings.
pub async fn registration(conn: &mut PgConnection) -> Result<Registration, StoreError> {
    Ok(
        sqlx::query_as(&format!("select {REGISTRATION_COLUMNS} from settings"))
            .fetch_one(conn)
            .await?,
    )
}

/// Stores `registration` (domains already normalized, role already judged).
pub async fn set_registration(
    conn: &mut PgConnection,
    registration: &Registration,
) -> Result<(), StoreError> {
    sqlx::query(
        "update settings set registration_policy = $1, registration_domains = $2,
                registration_role_id = $3, updated_at = now()",
    )
    .bind(registration.policy.as_str())
    .bind(&registration.domains)
    .bind(registration.role_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lower_case_ascii_with_idna() {
        assert_eq!(normalize_domain(" Example.COM ").unwrap(), "example.com");
        assert_eq!(
            normalize_domain("Bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_domain("a-b.c1.example").unwrap(),
            "a-b.c1.example"
        );
        for bad in [
            "",
            "example",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "user@example.com",
            "10.0.0.1",
            "exa mple.com",
            "example.com/x",
        ] {
            assert_eq!(normalize_domain(bad), Err(DomainError::Invalid), "{bad}");
        }
        let long = format!("{}.example", vec!["a".repeat(63); 4].join("."));
        assert_eq!(normalize_domain(&long), Err(DomainError::TooLong));
        assert_eq!(
            normalize_domain(&"a".repeat(5000)),
            Err(DomainError::TooLong)
        );
    }

    #[test]
    fn policies_admit_whom_they_say() {
        let mut registration = Registration {
            policy: RegistrationPolicy::InviteOnly,
            domains: vec![
                "acme.example".to_owned(),
                "xn--bcher-kva.example".to_owned(),
            ],
            role_id: None,
        };
        assert!(!registration.admits("ada@acme.example"));
        registration.policy = RegistrationPolicy::Open;
        assert!(registration.admits("ada@elsewhere.example"));
        registration.policy = RegistrationPolicy::Domain;
        assert!(registration.admits("Ada@ACME.example"));
        assert!(registration.admits("ada@bücher.example"));
        assert!(!registration.admits("ada@sub.acme.example"));
        assert!(!registration.admits("ada@acme.example.evil"));
        assert!(!registration.admits("ada@elsewhere.example"));
        assert!(!registration.admits("not an address"));
    }
}
