//! The wire protocol: JSON text frames, each an object with a `type`.
//!
//! Client → server: `{"type":"subscribe","events":["product.created",…]}`,
//! `{"type":"unsubscribe","events":[…]}`, `{"type":"ping"}`. Server → client:
//! `{"type":"event",…}` (an [`Envelope`]), `{"type":"subscribed","events":[…]}` (the set
//! after a change), `{"type":"pong"}`, and `{"type":"error","code":…,"detail":…}` for a
//! message the server could not take (the connection stays, unless a close follows).
//! A connection is closed with one of the documented [`Close`] codes.

use serde::{Deserialize, Serialize};

use crate::events::{Envelope, EventKind};

/// Why the server closes a connection, and the close code it sends (the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// 1001: the instance is shutting down; reconnect (to another instance).
    GoingAway,
    /// 1013: the credential could not be checked (Redis and PostgreSQL both unreachable).
    TryAgainLater,
    /// 4001: the session ended, the API key was revoked or the user was blocked.
    Revoked,
    /// 4003: the tenant was suspended or deleted.
    TenantUnavailable,
    /// 4008: the client answered nothing within the idle timeout.
    IdleTimeout,
    /// 4009: the client read too slowly; its queue of outgoing messages filled up.
    SlowConsumer,
    /// 4013: a message was larger than the limit.
    MessageTooBig,
    /// 4029: the client sent more messages per second than allowed.
    RateLimited,
}

impl Close {
    /// The close code.
    pub const fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::TryAgainLater => 1013,
            Self::Revoked => 4001,
            Self::TenantUnavailable => 4003,
            Self::IdleTimeout => 4008,
            Self::SlowConsumer => 4009,
            Self::MessageTooBig => 4013,
            Self::RateLimited => 4029,
        }
    }

    /// The close reason sent with the code (and the label of the closings metric).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "going_away",
            Self::TryAgainLater => "try_again_later",
            Self::Revoked => "revoked",
            Self::TenantUnavailable => "tenant_unavailable",
            Self::IdleTimeout => "idle_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::MessageTooBig => "message_too_big",
            Self::RateLimited => "rate_limited",
        }
    }

    /// Whether messages already queued are still delivered before closing (only at shutdown:
    /// a revoked or cut-off connection gets nothing more).
    pub const fn flushes(self) -> bool {
        matches!(self, Self::GoingAway)
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Add these kinds to the subscription.
    Subscribe {
        /// Event names.
        events: Vec<String>,
    },
    /// Remove these kinds.
    Unsubscribe {
        /// Event names.
        events: Vec<String>,
    },
    /// Asks for a `pong`.
    Ping,
}

/// The stable codes of error frames.
pub mod codes {
    /// The frame is not JSON, or not one of the protocol's messages.
    pub const MALFORMED: &str = "malformed_message";
    /// A binary frame (the protocol is text).
    pub const BINARY: &str = "binary_not_supported";
    /// An event name the server does not know.
    pub const UNKNOWN_EVENT: &str = "unknown_event";
    /// More names in one message than [`super::MAX_EVENTS_PER_MESSAGE`].
    pub const TOO_MANY_EVENTS: &str = "too_many_events";
    /// Over the message rate (a close 4029 follows).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Over the message size (a close 4013 follows).
    pub const MESSAGE_TOO_BIG: &str = "message_too_big";
}

/// Most event names one subscribe or unsubscribe message may carry.
pub const MAX_EVENTS_PER_MESSAGE: usize = 32;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A live event.
    Event(Envelope),
    /// The subscription after a change.
    Subscribed {
        /// Event names now subscribed to.
        events: Vec<EventKind>,
    },
    /// The answer to a `ping`.
    Pong,
    /// A message the server could not take.
    Error {
        /// Stable code (see [`codes`]).
        code: &'static str,
        /// What was wrong, for people.
        detail: String,
    },
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail (no maps with non-string keys, no I/O).
        serde_json::to_string(self).unwrap_or_else(|_| String::from(r#"{"type":"error"}"#))
    }

    /// An error frame.
    pub fn error(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Error {
            code,
            detail: detail.into(),
        }
    }
}

/// A client message, read: either what to do, or the error frame to answer with.
pub fn parse(text: &str) -> Result<(ClientMessage, Vec<EventKind>), ServerFrame> {
    let message: ClientMessage = serde_json::from_str(text).map_err(|e| {
        ServerFrame::error(
            codes::MALFORMED,
            format!("not a message of this protocol: {e}"),
        )
    })?;
    let names = match &message {
        ClientMessage::Subscribe { events } | ClientMessage::Unsubscribe { events } => {
            events.as_slice()
        }
        ClientMessage::Ping => &[],
    };
    if names.len() > MAX_EVENTS_PER_MESSAGE {
        return Err(ServerFrame::error(
            codes::TOO_MANY_EVENTS,
            format!("at most {MAX_EVENTS_PER_MESSAGE} event names per message"),
        ));
    }
    let mut kinds = Vec::with_capacity(names.len());
    for name in names {
        let kind = EventKind::parse(name).ok_or_else(|| {
            let shown: String = name.chars().take(64).collect();
            ServerFrame::error(codes::UNKNOWN_EVENT, format!("no event is named {shown:?}"))
        })?;
        kinds.push(kind);
    }
    Ok((message, kinds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_mistakes_get_stable_codes() {
        let (message, kinds) =
            parse(r#"{"type":"subscribe","events":["product.created"]}"#).expect("valid");
        assert!(matches!(message, ClientMessage::Subscribe { .. }));
        assert_eq!(kinds, vec![EventKind::ProductCreated]);
        assert_eq!(
            parse(r#"{"type":"ping"}"#).expect("valid").0,
            ClientMessage::Ping
        );
        let code = |text: &str| match parse(text) {
            Err(ServerFrame::Error { code, .. }) => code,
            other => panic!("{text} was taken: {other:?}"),
        };
        assert_eq!(code("not json"), codes::MALFORMED);
        assert_eq!(code(r#"{"type":"shout"}"#), codes::MALFORMED);
        assert_eq!(code(r#"{"type":"subscribe"}"#), codes::MALFORMED);
        assert_eq!(
            code(r#"{"type":"subscribe","events":["chat.message"]}"#),
            codes::UNKNOWN_EVENT
        );
        let many = vec!["\"product.created\""; 33].join(",");
        assert_eq!(
            code(&format!(r#"{{"type":"subscribe","events":[{many}]}}"#)),
            codes::TOO_MANY_EVENTS
        );
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        assert_eq!(Close::Revoked.code(), 4001);
        assert_eq!(Close::SlowConsumer.code(), 4009);
        assert_eq!(Close::GoingAway.code(), 1001);
        assert!(Close::GoingAway.flushes() && !Close::Revoked.flushes());
    }
}
