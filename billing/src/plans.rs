//! Plans and their limits. The catalog is configuration: the built-in default
//! ([`PlanCatalog::default`]: `free`, `pro`, `business`) or a JSON document replacing it.
//! A tenant whose plan is unknown to the catalog gets the `free` plan's limits, so a plan
//! removed from the configuration never lifts a limit.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// The plan every tenant starts on and falls back to.
pub const FREE_PLAN: &str = "free";

/// The media types a plan may allow uploads of.
const KNOWN_FILE_TYPES: [&str; 5] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "application/pdf",
];

/// What a plan allows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most live products (none: unlimited).
    #[serde(default)]
    pub products: Option<u64>,
    /// Most bytes of stored files.
    pub storage_bytes: ByteSize,
    /// Most active users (none: unlimited).
    #[serde(default)]
    pub seats: Option<u64>,
    /// Largest single upload.
    pub upload_bytes: ByteSize,
    /// Media types that may be uploaded.
    #[serde(default = "all_file_types")]
    pub file_types: Vec<String>,
    /// Most authenticated API requests per minute, all the tenant's users together
    /// (none: unlimited).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// How long the tenant's audit events are kept (humantime, such as `"730d"`; none: the
    /// global `CANOPY_RETAIN_AUDIT_EVENTS`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub audit_retention: Option<Duration>,
    /// Most live realtime connections (WebSocket and SSE) of the tenant on one instance
    /// (none: unlimited; a catalog that leaves it out gets 1,000).
    #[serde(default = "default_realtime_connections")]
    pub realtime_connections: Option<u64>,
}

/// The `realtime_connections` of a plan that does not name one: generous, but bounded.
pub const DEFAULT_REALTIME_CONNECTIONS: u64 = 1_000;

fn default_realtime_connections() -> Option<u64> {
    Some(DEFAULT_REALTIME_CONNECTIONS)
}

/// Shortest and longest `audit_retention` a plan may set (those of the global setting).
const AUDIT_RETENTION: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(3600)..=Duration::from_secs(3650 * 24 * 3600);

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("audit_retention {text:?}: {e}")))
}

fn all_file_types() -> Vec<String> {
    KNOWN_FILE_TYPES.iter().map(|&t| t.to_owned()).collect()
}

/// One plan.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Its name (`free`, `pro`, …), as stored on the tenant.
    pub name: String,
    /// The payment provider's price ids that subscribe to it.
    #[serde(default)]
    pub price_ids: Vec<String>,
    /// What it allows.
    pub limits: Limits,
}

/// A catalog that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Not JSON of the expected shape.
    #[error("not a plan catalog: {0}")]
    Syntax(String),
    /// Valid JSON, inconsistent catalog.
    #[error("{0}")]
    Invalid(String),
}

/// Every plan, in order of display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCatalog {
    plans: Vec<Plan>,
}

impl Default for PlanCatalog {
    /// `free`, `pro` (price `price_pro`) and `business` (price `price_business`).
    fn default() -> Self {
        let plan = |name: &str, price: Option<&str>, products, storage, seats, upload, rate| Plan {
            name: name.to_owned(),
            price_ids: price.map(str::to_owned).into_iter().collect(),
            limits: Limits {
                products,
                storage_bytes: storage,
                seats,
                upload_bytes: upload,
                file_types: all_file_types(),
                requests_per_minute: rate,
                audit_retention: None,
                realtime_connections: default_realtime_connections(),
            },
        };
        Self {
            plans: vec![
                plan(
                    FREE_PLAN,
                    None,
                    Some(100),
                    ByteSize::gib(1),
                    Some(3),
                    ByteSize::mib(10),
                    Some(600),
                ),
                plan(
                    "pro",
                    Some("price_pro"),
                    Some(10_000),
                    ByteSize::gib(50),
                    Some(25),
                    ByteSize::mib(200),
                    Some(6_000),
                ),
                plan(
                    "business",
                    Some("price_business"),
                    None,
                    ByteSize::gib(1024),
                    None,
                    ByteSize::gib(5),
                    Some(60_000),
                ),
            ],
        }
    }
}

impl PlanCatalog {
    /// A catalog from a JSON array of plans, for example
    /// `[{"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB"}}]`.
    /// It must contain `free`; names and price ids must be unique, and file types known.
    pub fn from_json(json: &str) -> Result<Self, PlanError> {
        let plans: Vec<Plan> =
            serde_json::from_str(json).map_err(|e| PlanError::Syntax(e.to_string()))?;
        Self::new(plans)
    }

    /// A catalog of `plans`, checked as [`Self::from_json`] says.
    pub fn new(plans: Vec<Plan>) -> Result<Self, PlanError> {
        let invalid = |m: String| Err(PlanError::Invalid(m));
        if !plans.iter().any(|p| p.name == FREE_PLAN) {
            return invalid(format!("the catalog has no `{FREE_PLAN}` plan"));
        }
        for (i, plan) in plans.iter().enumerate() {
            let valid_name = (1..=40).contains(&plan.name.len())
                && plan
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name {
                return invalid(format!(
                    "plan name {:?} is not 1-40 of a-z, 0-9, '_'",
                    plan.name
                ));
            }
            if plans[..i].iter().any(|p| p.name == plan.name) {
                return invalid(format!("plan {:?} appears twice", plan.name));
            }
            if let Some(price) = plan
                .price_ids
                .iter()
                .find(|price| plans[..i].iter().any(|p| p.price_ids.contains(price)))
            {
                return invalid(format!("price id {price:?} belongs to two plans"));
            }
            if let Some(unknown) = plan
                .limits
                .file_types
                .iter()
                .find(|t| !KNOWN_FILE_TYPES.contains(&t.as_str()))
            {
                return invalid(format!(
                    "plan {:?} allows {unknown:?}, which is not one of {}",
                    plan.name,
                    KNOWN_FILE_TYPES.join(", ")
                ));
            }
            if let Some(retention) = plan.limits.audit_retention
                && !AUDIT_RETENTION.contains(&retention)
            {
                return invalid(format!(
                    "plan {:?} keeps audit events {}, not between 1h and 3650d",
                    plan.name,
                    humantime::format_duration(retention)
                ));
            }
        }
        Ok(Self { plans })
    }

    /// Every plan.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    /// The plan called `name`.
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// The plan a price id subscribes to.
    pub fn by_price(&self, price_id: &str) -> Option<&Plan> {
        self.plans
            .iter()
            .find(|p| p.price_ids.iter().any(|id| id == price_id))
    }

    /// The limits of plan `name`, or the free plan's when the catalog does not know it.
    pub fn limits(&self, name: &str) -> &Limits {
        let plan = self
            .get(name)
            .or_else(|| self.get(FREE_PLAN))
            .unwrap_or(&self.plans[0]);
        &plan.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalog_is_valid_and_knows_its_prices() {
        let catalog = PlanCatalog::default();
        assert_eq!(PlanCatalog::new(catalog.plans().to_vec()).unwrap(), catalog);
        assert_eq!(catalog.by_price("price_pro").unwrap().name, "pro");
        assert_eq!(catalog.by_price("price_business").unwrap().name, "business");
        assert!(catalog.by_price("price_free").is_none());
        assert_eq!(catalog.limits("free").upload_bytes, ByteSize::mib(10));
        assert_eq!(catalog.limits("free").requests_per_minute, Some(600));
    }

    #[test]
    fn unknown_plans_get_the_free_limits() {
        let catalog = PlanCatalog::default();
        assert_eq!(catalog.limits("platinum"), catalog.limits(FREE_PLAN));
    }

    #[test]
    fn reads_json_with_human_sizes_and_defaults() {
        let catalog = PlanCatalog::from_json(
            r#"[{"name": "free", "limits": {"storage_bytes": "2 MiB", "upload_bytes": 1000,
                 "file_types": ["image/png"]}},
                {"name": "pro", "price_ids": ["price_1"],
                 "limits": {"storage_bytes": "1 GiB", "upload_bytes": "5 MiB", "products": 7}}]"#,
        )
        .unwrap();
        let free = catalog.limits("free");
        assert_eq!(free.storage_bytes.as_u64(), 2 * 1024 * 1024);
        assert_eq!(free.upload_bytes.as_u64(), 1000);
        assert_eq!(free.file_types, ["image/png"]);
        assert_eq!(free.products, None);
        let pro = catalog.limits("pro");
        assert_eq!(pro.products, Some(7));
        assert_eq!(pro.requests_per_minute, None);
        assert_eq!(pro.file_types.len(), KNOWN_FILE_TYPES.len());
        assert_eq!(pro.audit_retention, None);
    }

    #[test]
    fn a_plan_may_keep_its_audit_events_longer_or_shorter() {
        let catalog = PlanCatalog::from_json(
            r#"[{"name": "free", "limits": {"storage_bytes": 1, "upload_bytes": 1,
                 "audit_retention": "30d"}}]"#,
        )
        .unwrap();
        assert_eq!(
            catalog.limits("free").audit_retention,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        for (retention, error) in [("59m", "Invalid"), ("3651d", "Invalid"), ("soon", "Syntax")] {
            let json = format!(
                r#"[{{"name": "free", "limits": {{"storage_bytes": 1, "upload_bytes": 1,
                     "audit_retention": "{retention}"}}}}]"#
            );
            let refused = PlanCatalog::from_json(&json).unwrap_err();
            assert_eq!(
                matches!(refused, PlanError::Invalid(_)),
                error == "Invalid",
                "{retention}: {refused}"
            );
        }
    }

    #[test]
    fn refuses_inconsistent_catalogs() {
        let limits = r#""limits": {"storage_bytes": 1, "upload_bytes": 1}"#;
        let cases = [
            format!(r#"[{{"name": "pro", {limits}}}]"#),
            format!(r#"[{{"name": "free", {limits}}}, {{"name": "free", {limits}}}]"#),
            format!(
                r#"[{{"name": "free", "price_ids": ["p"], {limits}}},
                    {{"name": "pro", "price_ids": ["p"], {limits}}}]"#
            ),
            format!(r#"[{{"name": "Free!", {limits}}}]"#),
            r#"[{"name": "free", "limits": {"storage_bytes": 1, "upload_bytes": 1,
                 "file_types": ["image/svg+xml"]}}]"#
                .to_owned(),
        ];
        for json in cases {
            assert!(
                matches!(PlanCatalog::from_json(&json), Err(PlanError::Invalid(_))),
                "{json}"
            );
        }
        assert!(matches!(
            PlanCatalog::from_json(r#"[{"name": "free", "limits": {"storage": 1}}]"#),
            Err(PlanError::Syntax(_))
        ));
    }
}
