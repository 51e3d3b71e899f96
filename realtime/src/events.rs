//! Live domain events: what happened (an [`EventKind`]), to which record (its id and
//! version), in which tenant: never the record itself, so a client that wants the data
//! reads it through the REST API, with that API's permission checks.
//!
//! Events travel on one Redis channel per tenant, `canopy:rt:t:<tenant id>`
//! ([`events_channel`]); the name is built from the tenant's id only, and a subscriber takes
//! the tenant from the channel name, never from the payload. [`publish`] is called after the
//! transaction that caused the event commits, so a rolled-back change publishes nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use admission::redis::{RedisError, RedisPool, with_redis};
use chrono::{DateTime, Utc};
use rbac::Permission;
use serde::{Deserialize, Serialize};
use tenancy::TenantId;
use uuid::Uuid;

/// Prefix of every realtime channel (events and control announcements).
pub const CHANNEL_PREFIX: &str = "canopy:rt:";

/// Prefix of the per-tenant event channels.
pub const EVENTS_PREFIX: &str = "canopy:rt:t:";

/// Largest event payload a subscriber accepts from Redis (an envelope is ~200 bytes).
pub const MAX_PAYLOAD: usize = 4096;

/// The channel carrying `tenant`'s events.
pub fn events_channel(tenant: TenantId) -> String {
    format!("{EVENTS_PREFIX}{tenant}")
}

macro_rules! event_kinds {
    ($($variant:ident => $name:literal, $permission:ident;)*) => {
        /// A live domain event a client may subscribe to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $(
                #[doc = concat!("`", $name, "`, delivered to holders of `", stringify!($permission), "`.")]
                $variant,
            )*
        }

        impl EventKind {
            /// Every kind, in a fixed order (its bit in an [`EventSet`]).
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The wire name (`product.created`).
            pub const fn name(self) -> &'static str {
                match self { $(EventKind::$variant => $name),* }
            }

            /// The permission a connection's principal must hold, at delivery, to receive it.
            pub const fn permission(self) -> Permission {
                match self { $(EventKind::$variant => Permission::$permission),* }
            }

            /// The kind named `name`, if any.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(EventKind::$variant),)* _ => None }
            }
        }
    };
}

event_kinds! {
    ProductCreated => "product.created", ProductsRead;
    ProductUpdated => "product.updated", ProductsRead;
    ProductDeleted => "product.deleted", ProductsRead;
    FileReady => "file.ready", FilesRead;
    FileFailed => "file.failed", FilesRead;
    SubscriptionUpdated => "subscription.updated", BillingRead;
}

impl EventKind {
    fn bit(self) -> u32 {
        let index = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        1 << index
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| serde::de::Error::custom("unknown event"))
    }
}

/// The kinds a connection has subscribed to, shared between the hub (which reads it during
/// fan-out, without a lock) and the connection (which changes it).
#[derive(Debug, Default)]
pub struct EventSet(AtomicU32);

impl EventSet {
    /// Every kind.
    pub fn all() -> Self {
        let set = Self::default();
        set.add(EventKind::ALL);
        set
    }

    /// Adds `kinds`.
    pub fn add(&self, kinds: &[EventKind]) {
        let bits = kinds.iter().fold(0, |b, k| b | k.bit());
        self.0.fetch_or(bits, Ordering::Relaxed);
    }

    /// Removes `kinds`.
    pub fn remove(&self, kinds: &[EventKind]) {
        let bits = kinds.iter().fold(0, |b, k| b | k.bit());
        self.0.fetch_and(!bits, Ordering::Relaxed);
    }

    /// Whether `kind` is in the set.
    pub fn contains(&self, kind: EventKind) -> bool {
        self.0.load(Ordering::Relaxed) & kind.bit() != 0
    }

    /// The kinds in the set, in [`EventKind::ALL`]'s order.
    pub fn kinds(&self) -> Vec<EventKind> {
        EventKind::ALL
            .iter()
            .copied()
            .filter(|k| self.contains(*k))
            .collect()
    }
}

/// One event: what, which record (id and version), in which tenant, when it was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What happened.
    pub event: EventKind,
    /// The tenant (on the wire to clients, always the one of the channel it came on).
    pub tenant_id: Uuid,
    /// The record's id (a product, a file, the tenant's subscription).
    pub id: Uuid,
    /// The record's version after the change, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// When it was published (also the start of the fan-out latency measure).
    pub published_at: DateTime<Utc>,
}

impl Envelope {
    /// An event about record `id` at `version`, published now.
    pub fn new(event: EventKind, tenant: TenantId, id: Uuid, version: Option<i64>) -> Self {
        Self {
            event,
            tenant_id: tenant.0,
            id,
            version,
            published_at: Utc::now(),
        }
    }
}

/// Publishes `envelope` to every instance's subscribers of its tenant. Call it after the
/// transaction that caused the event has committed. Best effort, like pub/sub itself: an
/// event Redis could not take is logged and lost (clients re-read through REST on
/// reconnect), never retried into a later, misleading order.
pub async fn publish(redis: &RedisPool, envelope: &Envelope) -> Result<(), RedisError> {
    let channel = events_channel(TenantId(envelope.tenant_id));
    let payload =
        serde_json::to_string(envelope).map_err(|e| RedisError::UnexpectedReply(e.to_string()))?;
    with_redis(redis, |mut conn| async move {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut *conn)
            .await
    })
    .await
    .map(|_| ())
}

/// Publishes the events of one request in order, in one round trip, off the request: the
/// change has committed, so the client's answer neither waits for the notification nor
/// depends on it (a failure is logged). A bulk change's events go out together.
pub fn announce(redis: &RedisPool, envelopes: Vec<Envelope>) {
    if envelopes.is_empty() {
        return;
    }
    let messages: Vec<(String, String)> = envelopes
        .iter()
        .filter_map(|envelope| {
            let payload = serde_json::to_string(envelope).ok()?;
            Some((events_channel(TenantId(envelope.tenant_id)), payload))
        })
        .collect();
    let redis = redis.clone();
    tokio::spawn(async move {
        let count = messages.len();
        let published = with_redis(&redis, |mut conn| {
            let messages = &messages;
            async move {
                let mut pipe = redis::pipe();
                for (channel, payload) in messages {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                pipe.query_async::<()>(&mut *conn).await
            }
        })
        .await;
        if let Err(error) = published {
            tracing::warn!(%error, count, "could not publish live events");
        }
    });
}

/// The tenant of an event channel's name (`canopy:rt:t:<uuid>`), if it is one.
pub fn tenant_of_events_channel(channel: &str) -> Option<TenantId> {
    let raw = channel.strip_prefix(EVENTS_PREFIX)?;
    // Only the canonical hyphenated form we publish under.
    (raw.len() == 36)
        .then(|| Uuid::parse_str(raw).ok())
        .flatten()
        .map(TenantId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip_and_sets_hold_what_was_added() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.name()), Some(*kind));
        }
        assert_eq!(EventKind::parse("product.exploded"), None);
        let set = EventSet::default();
        set.add(&[EventKind::ProductCreated, EventKind::FileReady]);
        assert!(set.contains(EventKind::FileReady));
        assert!(!set.contains(EventKind::ProductDeleted));
        set.remove(&[EventKind::FileReady]);
        assert_eq!(set.kinds(), vec![EventKind::ProductCreated]);
        assert_eq!(EventSet::all().kinds().len(), EventKind::ALL.len());
    }

    #[test]
    fn only_canonical_tenant_channels_parse() {
        let tenant = TenantId(Uuid::new_v4());
        assert_eq!(
            tenant_of_events_channel(&events_channel(tenant)),
            Some(tenant)
        );
        assert_eq!(tenant_of_events_channel("canopy:rt:t:not-a-uuid"), None);
        assert_eq!(
            tenant_of_events_channel(&format!("canopy:rt:t:{}", tenant.0.simple())),
            None
        );
        assert_eq!(tenant_of_events_channel("canopy:tenants:changed"), None);
    }
}
