//! The WebSocket of one connection: frames out from the hub's queue, messages in (the
//! protocol of `realtime::protocol`), server pings every `CANOPY_REALTIME_PING`, the idle
//! timeout, the size and rate limits, and the close with its documented code.

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{
    BoxWebSocketUpgraded, CloseCode, Message, WebSocket, WebSocketConfig, WebSocketStream,
};
use realtime::{
    ClientMessage, Close, Connection, Outgoing, ServerFrame,
    limits::MessageRate,
    protocol::{self, codes},
};
use settings::RealtimeSettings;
use tokio::time::Instant;

use crate::{AppState, metrics::Metrics};

/// How long a close frame may take to reach a client that does not read.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Upgrades `websocket` and drives it for `connection`.
pub(super) fn upgrade(
    websocket: WebSocket,
    connection: Connection,
    state: &AppState,
) -> BoxWebSocketUpgraded {
    let settings = state.settings.realtime.clone();
    let metrics = state.metrics.clone();
    // tungstenite's own bound, above ours so that ours answers first with its close code.
    let hard = usize::try_from(settings.max_message)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .saturating_add(4096);
    let config = WebSocketConfig::default()
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard));
    // The connection outlives the request; its span hangs below the request's (request id,
    // tenant, user), so the connection's log lines carry them.
    let span = tracing::info_span!(
        parent: &tracing::Span::current(),
        "realtime_connection",
        transport = "websocket"
    );
    websocket
        .config(config)
        .on_upgrade(move |stream| {
            tracing::Instrument::instrument(drive(stream, connection, settings, metrics), span)
        })
        .boxed()
}

type Sink = futures_util::stream::SplitSink<WebSocketStream, Message>;

/// Runs the connection until it closes, then sends the close frame (within
/// [`CLOSE_GRACE`]).
async fn drive(
    stream: WebSocketStream,
    mut connection: Connection,
    settings: RealtimeSettings,
    metrics: Arc<Metrics>,
) {
    let (mut sink, mut source) = stream.split();
    let mut ping = tokio::time::interval_at(Instant::now() + settings.ping, settings.ping);
    let mut idle_deadline = Instant::now() + settings.idle;
    let mut rate = MessageRate::new(settings.messages_per_second);
    let max = usize::try_from(settings.max_message).unwrap_or(usize::MAX);
    let closing: Option<Close> = loop {
        tokio::select! {
            outgoing = connection.next() => match outgoing {
                Outgoing::Frames(frames) => {
                    let count = frames.len();
                    let sent = async {
                        for frame in frames {
                            sink.feed(Message::text(frame.to_string())).await?;
                        }
                        sink.flush().await
                    };
                    // A client that does not read blocks the send; the hub may cut it off
                    // meanwhile (its queue full), which must not wait for the send.
                    tokio::select! {
                        sent = sent => if sent.is_err() { break None },
                        why = cut_off(&connection) => break Some(why),
                    }
                    metrics.observe_realtime_out(count);
                }
                Outgoing::Close(why) => break Some(why),
            },
            incoming = source.next() => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    // Past even tungstenite's bound, or a broken connection: nothing to say.
                    Some(Err(_)) | None => break None,
                };
                idle_deadline = Instant::now() + settings.idle;
                let reply = match message {
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Text(text) => {
                        metrics.observe_realtime_in();
                        if !rate.admit() {
                            let _ = send(&mut sink, ServerFrame::error(codes::RATE_LIMITED, format!(
                                "at most {} messages per second", settings.messages_per_second))).await;
                            break Some(Close::RateLimited);
                        }
                        if text.len() > max {
                            let _ = send(&mut sink, too_big(max)).await;
                            break Some(Close::MessageTooBig);
                        }
                        answer(&connection, &text)
                    }
                    Message::Binary(bytes) => {
                        metrics.observe_realtime_in();
                        if !rate.admit() {
                            break Some(Close::RateLimited);
                        }
                        if bytes.len() > max {
                            let _ = send(&mut sink, too_big(max)).await;
                            break Some(Close::MessageTooBig);
                        }
                        ServerFrame::error(codes::BINARY, "the protocol is JSON text frames")
                    }
                };
                if send(&mut sink, reply).await.is_err() {
                    break None;
                }
            },
            _ = ping.tick() => {
                if sink.send(Message::ping(Vec::new())).await.is_err() {
                    break None;
                }
            },
            () = tokio::time::sleep_until(idle_deadline) => break Some(Close::IdleTimeout),
        }
    };
    if let Some(why) = closing {
        connection.close(why);
        let frame = Message::close_with(CloseCode::from(why.code()), why.reason());
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(frame)).await;
    }
    drop(connection);
}

/// Completes when the connection is closed for a reason that delivers nothing more.
async fn cut_off(connection: &Connection) -> Close {
    let mut closed = connection.watch_close();
    loop {
        if let Some(why) = *closed.borrow_and_update()
            && !why.flushes()
        {
            return why;
        }
        if closed.changed().await.is_err() {
            return Close::GoingAway;
        }
    }
}

fn too_big(max: usize) -> ServerFrame {
    ServerFrame::error(
        codes::MESSAGE_TOO_BIG,
        format!("messages may be at most {max} bytes"),
    )
}

/// The answer to one text message.
fn answer(connection: &Connection, text: &str) -> ServerFrame {
    match protocol::parse(text) {
        Ok((ClientMessage::Ping, _)) => ServerFrame::Pong,
        Ok((ClientMessage::Subscribe { .. }, kinds)) => {
            connection.events().add(&kinds);
            ServerFrame::Subscribed {
                events: connection.events().kinds(),
            }
        }
        Ok((ClientMessage::Unsubscribe { .. }, kinds)) => {
            connection.events().remove(&kinds);
            ServerFrame::Subscribed {
                events: connection.events().kinds(),
            }
        }
        Err(error) => error,
    }
}

async fn send(sink: &mut Sink, frame: ServerFrame) -> std::io::Result<()> {
    sink.send(Message::text(frame.to_text())).await
}
