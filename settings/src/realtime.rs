//! Realtime connections (WebSocket and SSE): queues, heartbeats and limits.

use std::time::Duration;

use serde::Deserialize;

use crate::{
    de,
    error::Rejection,
    loader::{Check, Section},
};

/// Realtime settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RealtimeSettings {
    /// Capacity of each connection's outgoing queue; a connection whose queue fills is cut
    /// off (close 4009).
    #[serde(rename = "realtime_queue", deserialize_with = "de::parsed")]
    pub queue: usize,
    /// Most connections of one user on one instance.
    #[serde(rename = "realtime_max_per_user", deserialize_with = "de::parsed")]
    pub max_per_user: usize,
    /// How often the server pings a WebSocket client.
    #[serde(rename = "realtime_ping", deserialize_with = "de::duration")]
    pub ping: Duration,
    /// A WebSocket client that sends nothing (not even a pong) for this long is dropped.
    #[serde(rename = "realtime_idle", deserialize_with = "de::duration")]
    pub idle: Duration,
    /// Largest incoming WebSocket message.
    #[serde(rename = "realtime_max_message", deserialize_with = "de::size")]
    pub max_message: u64,
    /// Most incoming messages per second on one connection.
    #[serde(
        rename = "realtime_messages_per_second",
        deserialize_with = "de::parsed"
    )]
    pub messages_per_second: u32,
    /// How often each connection re-checks its credential and tenant (besides the
    /// announcements that close it at once).
    #[serde(rename = "realtime_recheck", deserialize_with = "de::duration")]
    pub recheck: Duration,
    /// How long a ticket from `POST /v1/realtime/tickets` is valid.
    #[serde(rename = "realtime_ticket_ttl", deserialize_with = "de::duration")]
    pub ticket_ttl: Duration,
}

impl Section for RealtimeSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("realtime_queue", "a whole number from 1 to 65536"),
        ("realtime_max_per_user", "a whole number from 1 to 10000"),
        ("realtime_ping", "a duration such as 20s"),
        (
            "realtime_idle",
            "a duration longer than realtime_ping, such as 60s",
        ),
        (
            "realtime_max_message",
            "a size from 128 bytes to 1MiB, such as 16KiB",
        ),
        (
            "realtime_messages_per_second",
            "a whole number from 1 to 10000",
        ),
        ("realtime_recheck", "a duration from 1s to 1h, such as 30s"),
        (
            "realtime_ticket_ttl",
            "a duration from 1s to 5m, such as 30s",
        ),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        Rejection::unless((1..=65_536).contains(&self.queue), "realtime_queue")?;
        Rejection::unless(
            (1..=10_000).contains(&self.max_per_user),
            "realtime_max_per_user",
        )?;
        Rejection::unless(!self.ping.is_zero(), "realtime_ping")?;
        Rejection::unless(self.idle > self.ping, "realtime_idle")?;
        Rejection::unless(
            (128..=1024 * 1024).contains(&self.max_message),
            "realtime_max_message",
        )?;
        Rejection::unless(
            (1..=10_000).contains(&self.messages_per_second),
            "realtime_messages_per_second",
        )?;
        Rejection::unless(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.recheck),
            "realtime_recheck",
        )?;
        Rejection::unless(
            (Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.ticket_ttl),
            "realtime_ticket_ttl",
        )
    }
}
