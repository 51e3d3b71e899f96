//! The webhook inbox, in the control plane: every verified event is stored once (keyed by
//! the provider's event id) and processed by a job enqueued in the same transaction.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An event as the provider sends it (only what routing needs; the rest stays in
/// `payload`).
#[derive(Debug, Clone)]
pub struct InboundEvent {
    /// `evt_…`.
    pub id: String,
    /// `customer.subscription.updated`, …
    pub kind: String,
    /// When the provider created it.
    pub created: DateTime<Utc>,
    /// Live or test mode.
    pub livemode: bool,
    /// The whole event.
    pub payload: Value,
}

/// A body that is not an event.
#[derive(Debug, thiserror::Error)]
#[error("not an event: {0}")]
pub struct NotAnEvent(pub String);

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    #[serde(default)]
    livemode: bool,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: Value,
}

impl InboundEvent {
    /// Reads an event from its JSON.
    pub fn parse(body: &[u8]) -> Result<Self, NotAnEvent> {
        let payload: Value = serde_json::from_slice(body).map_err(|e| NotAnEvent(e.to_string()))?;
        Self::from_value(payload)
    }

    /// Reads an event from its JSON value. NUL characters, which PostgreSQL cannot store,
    /// are dropped from its strings.
    pub fn from_value(mut payload: Value) -> Result<Self, NotAnEvent> {
        strip_nul(&mut payload);
        let envelope = Envelope::deserialize(&payload).map_err(|e| NotAnEvent(e.to_string()))?;
        let Envelope {
            id,
            kind,
            created,
            livemode,
            data: Data { object },
        } = envelope;
        if !is_event_id(&id) {
            return Err(NotAnEvent("the id is not an event id".into()));
        }
        if !(1..=200).contains(&kind.len()) {
            return Err(NotAnEvent("the type is empty or too long".into()));
        }
        if !object.is_object() {
            return Err(NotAnEvent("data.object is not an object".into()));
        }
        let created = Utc
            .timestamp_opt(created, 0)
            .single()
            .ok_or_else(|| NotAnEvent("created is out of range".into()))?;
        Ok(Self {
            id,
            kind,
            created,
            livemode,
            payload,
        })
    }

    /// `data.object`.
    pub fn object(&self) -> &Value {
        &self.payload["data"]["object"]
    }
}

fn strip_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => s.retain(|c| c != '\0'),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
            for key in keys {
                if let Some(v) = map.remove(&key) {
                    map.insert(key.replace('\0', ""), v);
                }
            }
            map.values_mut().for_each(strip_nul);
        }
        _ => {}
    }
}

/// Whether `id` has the shape of a provider's event id.
pub fn is_event_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How an event reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Delivered to the webhook endpoint.
    Webhook,
    /// Found by listing the provider's events.
    Reconciliation,
}

tenancy::text_enum!(Source, "event source" {
    Webhook => "webhook", Reconciliation => "reconciliation"
});

/// Stores `event` unless its id is known; true when it is new.
pub async fn record(
    conn: &mut PgConnection,
    event: &InboundEvent,
    source: Source,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into public.webhook_events (id, type, created_at, livemode, payload, source)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (id) do nothing",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(event.created)
    .bind(event.livemode)
    .bind(&event.payload)
    .bind(source.as_str())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Which of `ids` are already stored.
pub async fn known(pool: &PgPool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select id from public.webhook_events where id = any($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// Where an event is in its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Stored, not processed yet.
    Pending,
    /// Applied.
    Processed,
    /// Nothing to do (an unhandled type, an unknown customer, an older state).
    Ignored,
    /// Processing failed (`last_error`); it is retried, or can be replayed.
    Failed,
}

tenancy::text_enum!(EventStatus, "event status" {
    Pending => "pending", Processed => "processed", Ignored => "ignored", Failed => "failed"
});

/// A stored event (a row of `public.webhook_events`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    /// Provider's id.
    pub id: String,
    /// Type (the column `type`).
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Provider's creation time.
    pub created_at: DateTime<Utc>,
    /// Live mode.
    pub livemode: bool,
    /// Processing state.
    #[sqlx(try_from = "String")]
    pub status: EventStatus,
    /// The tenant concerned, once known.
    pub tenant_id: Option<Uuid>,
    /// Processing attempts.
    pub attempts: i32,
    /// Why the last attempt failed, or why it was ignored.
    pub last_error: Option<String>,
    /// `webhook` or `reconciliation`.
    pub source: String,
    /// When we stored it.
    pub received_at: DateTime<Utc>,
    /// When processing ended.
    pub processed_at: Option<DateTime<Utc>>,
    /// The whole event.
    pub payload: Value,
}

const COLUMNS: &str = "id, type, created_at, livemode, status, tenant_id, attempts, last_error, \
     source, received_at, processed_at, payload";

/// A stored event, locked for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from public.webhook_events where id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// A stored event.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from public.webhook_events where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Records the outcome of processing `id`.
pub async fn finish(
    conn: &mut PgConnection,
    id: &str,
    status: EventStatus,
    tenant: Option<Uuid>,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update public.webhook_events
         set status = $2, tenant_id = coalesce($3, tenant_id), last_error = $4,
             attempts = attempts + 1,
             processed_at = case when $2 = 'failed' then processed_at else now() end
         where id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(tenant)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts an event back to `pending` (an operator's replay).
pub async fn reset(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update public.webhook_events set status = 'pending', processed_at = null where id = $1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Filters of the operator's listing.
#[derive(Debug, Default)]
pub struct EventFilter {
    /// Only this status.
    pub status: Option<EventStatus>,
    /// Only this type.
    pub kind: Option<String>,
    /// Only this tenant's.
    pub tenant: Option<Uuid>,
    /// Keyset: received before this (time, id).
    pub before: Option<(DateTime<Utc>, String)>,
    /// Rows to fetch.
    pub limit: i64,
}

/// Stored events, newest first.
pub async fn list(pool: &PgPool, filter: &EventFilter) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let (before_at, before_id) = match &filter.before {
        Some((at, id)) => (Some(*at), Some(id.as_str())),
        None => (None, None),
    };
    sqlx::query_as(&format!(
        "select {COLUMNS} from public.webhook_events
         where ($1::text is null or status = $1)
           and ($2::text is null or type = $2)
           and ($3::uuid is null or tenant_id = $3)
           and ($4::timestamptz is null or (received_at, id) < ($4, $5))
         order by received_at desc, id desc
         limit $6"
    ))
    .bind(filter.status.map(EventStatus::as_str))
    .bind(filter.kind.as_deref())
    .bind(filter.tenant)
    .bind(before_at)
    .bind(before_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Deletes one batch of at most `batch` events processed or ignored more than `retain` ago
/// (pending and failed events are never deleted). Returns how many it deleted.
pub async fn prune_processed_batch(
    pool: &PgPool,
    retain: std::time::Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "delete from public.webhook_events where id in (
             select id from public.webhook_events
             where status in ('processed', 'ignored')
               and processed_at < now() - make_interval(secs => $1)
             limit $2
             for update skip locked)",
    )
    .bind(jobs::retention::interval_secs(retain))
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
