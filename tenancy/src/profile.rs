//! What a tenant says about itself: its display name (in the control plane, since routing
//! and the registry show it) and its locale and time zone (in its own schema's `settings`
//! row). A change to both is one transaction: [`ControlDb::begin_renaming`] renames the
//! tenant and hands back that transaction, switched to the tenant, for the rest.

use sqlx::Executor;

use crate::{
    ControlDb, TenancyError, Tenant, TenantId, TenantTx, tenant_db::switch_statement,
    tenants::TENANT_COLUMNS, validate_name,
};

/// Longest locale tag accepted (BCP 47's practical bound).
pub const MAX_LOCALE_LENGTH: usize = 35;

/// Longest time zone name accepted (as the schema's `settings_timezone_length`).
pub const MAX_TIME_ZONE_LENGTH: usize = 64;

/// A tenant's locale and time zone.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Preferences {
    /// BCP 47 language tag: a 2–3 letter lower-case language, then subtags of 2–8 letters
    /// or digits (`en`, `pt-BR`, `zh-Hant-TW`).
    pub locale: String,
    /// IANA time zone (`Europe/Lisbon`, `UTC`).
    pub timezone: String,
}

/// Whether `tag` is shaped like a locale: the rule of the schema's `settings_locale_format`
/// (`^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$`), at most [`MAX_LOCALE_LENGTH`] bytes.
pub fn is_locale(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    tag.len() <= MAX_LOCALE_LENGTH
        && (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether `name` is made of what IANA time zone names are made of (ASCII letters, digits,
/// `/`, `_`, `+`, `-`): anything else cannot name one, and is refused before any SQL.
pub fn is_time_zone_shaped(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TIME_ZONE_LENGTH
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'-'))
}

/// The tenant's preferences, inside its transaction.
pub async fn preferences(tx: &mut TenantTx) -> Result<Preferences, TenancyError> {
    Ok(sqlx::query_as("select locale, timezone from settings")
        .fetch_one(&mut **tx)
        .await?)
}

/// Replaces the tenant's preferences, inside its transaction.
pub async fn set_preferences(tx: &mut TenantTx, to: &Preferences) -> Result<(), TenancyError> {
    sqlx::query("update settings set locale = $1, timezone = $2, updated_at = now()")
        .bind(&to.locale)
        .bind(&to.timezone)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether PostgreSQL's time zone database (`pg_timezone_names`, the IANA database the
/// server ships with) knows `name` exactly.
pub async fn is_time_zone(tx: &mut TenantTx, name: &str) -> Result<bool, TenancyError> {
    if !is_time_zone_shaped(name) {
        return Ok(false);
    }
    Ok(
        sqlx::query_scalar("select exists (select 1 from pg_timezone_names where name = $1)")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?,
    )
}

impl ControlDb {
    /// Renames `tenant` and returns the transaction that did it, switched to the tenant's
    /// role and schema for the rest of the change (both commit together or not at all),
    /// with the tenant as renamed and the name it had (the same when nothing changed). A
    /// deleted or unknown tenant is [`TenancyError::TenantNotFound`].
    pub async fn begin_renaming(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<(TenantTx, Tenant, String), TenancyError> {
        let name = validate_name(name)?;
        let mut tx = TenantTx::open(self.pool().acquire().await?, tenant, "begin").await?;
        let previous: Option<String> = sqlx::query_scalar(
            "select name from public.tenants where id = $1 and status <> 'deleted' for update",
        )
        .bind(tenant.0)
        .fetch_optional(&mut *tx)
        .await?;
        let previous = previous.ok_or(TenancyError::TenantNotFound)?;
        let renamed: Tenant = sqlx::query_as(&format!(
            "update public.tenants
             set name = $2, updated_at = case when name = $2 then updated_at else now() end
             where id = $1
             returning {TENANT_COLUMNS}"
        ))
        .bind(tenant.0)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        (&mut *tx)
            .execute(sqlx::raw_sql(&switch_statement("", tenant)))
            .await?;
        Ok((tx, renamed, previous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_follow_the_schemas_rule() {
        for good in ["en", "pt-BR", "zh-Hant-TW", "de-CH-1996", "ast"] {
            assert!(is_locale(good), "{good}");
        }
        for bad in [
            "",
            "e",
            "EN",
            "english",
            "en-",
            "en_US",
            "en-a",
            "en-abcdefghi",
            "en--US",
            "ü",
        ] {
            assert!(!is_locale(bad), "{bad}");
        }
        assert!(!is_locale(&format!("en{}", "-abcdefgh".repeat(4))));
    }

    #[test]
    fn time_zone_names_are_refused_before_sql_unless_shaped_like_one() {
        for good in [
            "UTC",
            "Europe/Lisbon",
            "America/Port-au-Prince",
            "Etc/GMT+5",
        ] {
            assert!(is_time_zone_shaped(good), "{good}");
        }
        for bad in [
            "",
            "Europe/\0",
            "Europe/Lisbon ",
            "Mars/Olympus;--",
            "Zürich",
        ] {
            assert!(!is_time_zone_shaped(bad), "{bad:?}");
        }
        assert!(!is_time_zone_shaped(&"A".repeat(65)));
    }
}
