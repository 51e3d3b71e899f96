//! Realtime: live connections of tenant users (WebSocket and SSE, whose edge is in `api`),
//! fanned out across instances through Redis pub/sub.
//!
//! - [`events`]: the live domain events ([`EventKind`], the permission each needs), their
//!   [`Envelope`] (ids and versions, never whole records), the channel names (built from
//!   ids only) and [`publish`], called after the transaction that caused an event commits.
//! - [`protocol`]: the JSON frames of the wire protocol, client → server and server →
//!   client, and the documented close codes ([`Close`]).
//! - [`hub`]: this instance's registry of live connections ([`Hub`]), each with a bounded
//!   outgoing queue; the one Redis subscriber of the instance ([`hub::listen`]) that
//!   delivers events and applies control announcements (revoked sessions and keys,
//!   blocked users, suspended or deleted tenants) by closing sockets.
//! - [`tickets`]: single-use, 30-second tickets for browsers, stored in Redis only as
//!   their SHA-256.
//! - [`limits`]: the per-connection message rate.
//!
//! No HTTP here: `api` upgrades the request, authenticates it and drives the socket, calling
//! in here for everything that is not a frame on the wire.

pub mod events;
pub mod hub;
pub mod limits;
pub mod protocol;
pub mod tickets;

pub use events::{Envelope, EventKind, EventSet, publish};
pub use hub::{Connection, Hub, HubSettings, Observer, Outgoing, Refusal};
pub use protocol::{ClientMessage, Close, ServerFrame};
