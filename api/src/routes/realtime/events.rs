//! `GET /v1/realtime/events`: the connection's events as Server-Sent Events, read-only.
//! Each event is an SSE event named after its kind whose data is the same JSON as the
//! WebSocket's event frame; comments keep the stream alive every `CANOPY_REALTIME_PING`.
//! The stream ends when the connection closes (revoked, tenant suspended, shutdown, cut off).

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt, stream};
use poem::web::sse::Event;
use poem_openapi::{Object, types::ToJSON};
use realtime::{Connection, Outgoing};
use serde::Deserialize;
use uuid::Uuid;

use crate::{AppState, metrics::Metrics};

/// A live event, as the WebSocket's `event` frame and the SSE stream carry it: what
/// happened to which record, never the record itself.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct LiveEvent {
    /// Always `event`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// `product.created`, `product.updated`, `product.deleted`, `file.ready`,
    /// `file.failed` or `subscription.updated`.
    pub event: String,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The record's id.
    pub id: Uuid,
    /// Its version after the change, when it has one.
    pub version: Option<i64>,
    /// When the event was published.
    pub published_at: chrono::DateTime<chrono::Utc>,
}

/// The stream type of the SSE response.
pub type EventStream =
    poem_openapi::payload::EventStream<Pin<Box<dyn Stream<Item = LiveEvent> + Send>>>;

/// The SSE response for `connection`.
pub(super) fn stream(connection: Connection, state: &AppState) -> EventStream {
    let metrics = state.metrics.clone();
    let keep_alive = state.settings.realtime.ping;
    let events = stream::unfold(
        (connection, metrics),
        |(mut connection, metrics): (Connection, Arc<Metrics>)| async move {
            match connection.next().await {
                Outgoing::Frames(frames) => {
                    metrics.observe_realtime_out(frames.len());
                    let events: Vec<LiveEvent> = frames
                        .iter()
                        .filter_map(|f| serde_json::from_str(f).ok())
                        .collect();
                    Some((stream::iter(events), (connection, metrics)))
                }
                Outgoing::Close(_) => None,
            }
        },
    )
    .flatten();
    poem_openapi::payload::EventStream::new(
        Box::pin(events) as Pin<Box<dyn Stream<Item = _> + Send>>
    )
    .keep_alive(keep_alive)
    .to_event(|event: LiveEvent| {
        let name = event.event.clone();
        Event::message(event.to_json_string()).event_type(name)
    })
}
