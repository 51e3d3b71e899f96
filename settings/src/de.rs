//! Deserializers for setting values, used with `#[serde(deserialize_with = ...)]`.
//!
//! Every value reaches serde as a string (the environment holds nothing else, and the file
//! reader flattens TOML values to the same text), trimmed. A deserializer only says
//! *missing* (the value is empty) or *invalid*; the loader adds which key, where it came
//! from and what the section expects there, so the messages stay one line each and name
//! the variable. Range checks that differ per key live in the sections' `validate`.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de::Error as _};
use sqlx::postgres::PgConnectOptions;
use url::Url;

/// The message of a deserializer error meaning "the value is empty".
pub(crate) const MISSING: &str = "\u{1}missing";
/// The message of a deserializer error meaning "the value is not acceptable".
pub(crate) const INVALID: &str = "\u{1}invalid";

fn invalid<E: serde::de::Error>() -> E {
    E::custom(INVALID)
}

/// The trimmed text, possibly empty.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    Ok(value.trim().to_owned())
}

/// The trimmed text, `None` when empty.
pub(crate) fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = text(d)?;
    Ok((!value.is_empty()).then_some(value))
}

/// The trimmed text, which must not be empty.
fn required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    optional_text(d)?.ok_or_else(|| D::Error::custom(MISSING))
}

/// A required value read with `FromStr` (numbers, booleans, addresses, names, enums).
pub(crate) fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
{
    required(d)?.parse().map_err(|_| invalid())
}

/// An optional value read with `FromStr`; empty is the type's default.
pub(crate) fn parsed_or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Default,
{
    match optional_text(d)? {
        Some(value) => value.parse().map_err(|_| invalid()),
        None => Ok(T::default()),
    }
}

/// A non-zero duration in humantime syntax (`30s`, `1m 30s`, `7d`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    humantime::parse_duration(&required(d)?)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(invalid)
}

/// A non-zero size in bytes: a plain number or a bytesize such as `512KiB` or `2MB`.
pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = required(d)?;
    let bytes = match value.parse::<u64>() {
        Ok(n) => n,
        Err(_) => value
            .parse::<bytesize::ByteSize>()
            .map_err(|_| invalid())?
            .as_u64(),
    };
    if bytes == 0 {
        return Err(invalid());
    }
    Ok(bytes)
}

/// A non-empty secret.
pub(crate) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    required(d).map(SecretString::from)
}

/// Comma-separated secrets, at least one.
pub(crate) fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    let secrets: Vec<SecretString> = required(d)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(SecretString::from)
        .collect();
    if secrets.is_empty() {
        return Err(invalid());
    }
    Ok(secrets)
}

fn is_http(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
}

/// An `http://` or `https://` URL with a host.
pub(crate) fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    Url::parse(&required(d)?)
        .ok()
        .filter(|u| is_http(u) && u.host().is_some())
        .ok_or_else(invalid)
}

/// An optional `http(s)://` URL kept as written; empty when unset (the loader fills in
/// the default, which depends on other settings).
pub(crate) fn optional_http_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match optional_text(d)? {
        Some(v) if Url::parse(&v).is_ok_and(|u| is_http(&u)) => Ok(v),
        Some(_) => Err(invalid()),
        None => Ok(String::new()),
    }
}

/// A `postgres://` (or `postgresql://`) URL, as connection options.
pub(crate) fn postgres<'de, D: Deserializer<'de>>(d: D) -> Result<PgConnectOptions, D::Error> {
    let value = required(d)?;
    let url = Url::parse(&value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(invalid());
    }
    PgConnectOptions::from_str(&value).map_err(|_| invalid())
}

/// A `redis://` or `rediss://` URL, kept secret (it may carry a password).
pub(crate) fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    let value = required(d)?;
    let url = Url::parse(&value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(invalid());
    }
    Ok(SecretString::from(value))
}

/// An optional `smtp://` or `smtps://` URL with a host, kept secret.
pub(crate) fn smtp_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let Some(value) = optional_text(d)? else {
        return Ok(None);
    };
    let url = Url::parse(&value).map_err(|_| invalid())?;
    if !(matches!(url.scheme(), "smtp" | "smtps") && url.host().is_some()) {
        return Err(invalid());
    }
    Ok(Some(SecretString::from(value)))
}

/// An optional domain name, lower case, without a leading dot.
pub(crate) fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Some(value) = optional_text(d)? else {
        return Ok(None);
    };
    let value = value.trim_start_matches('.').to_ascii_lowercase();
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(invalid());
    }
    Ok(Some(value))
}

/// Comma-separated plain `http(s)` origins (no path or query), without a trailing slash;
/// none when empty.
pub(crate) fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let Some(value) = optional_text(d)? else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let url = Url::parse(o).ok()?;
            let plain =
                is_http(&url) && url.host().is_some() && url.path() == "/" && url.query().is_none();
            plain.then(|| o.trim_end_matches('/').to_owned())
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(invalid)
}

/// `host:port`, or `off` for no listener.
pub(crate) fn socket_addr_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match required(d)?.as_str() {
        "off" => Ok(None),
        value => value.parse().map(Some).map_err(|_| invalid()),
    }
}

/// Comma-separated whole numbers, ascending and without repeats (the section bounds them).
pub(crate) fn sorted_numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let mut numbers = required(d)?
        .split(',')
        .map(|n| n.trim().parse().ok())
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(invalid)?;
    numbers.sort_unstable();
    numbers.dedup();
    Ok(numbers)
}
