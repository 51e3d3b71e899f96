//! Logging: JSON lines for machines, pretty output on a terminal, always on stderr so that
//! commands like `canopy openapi` keep stdout for their output.
//!
//! Every request logs a line, which made logging the largest cost of an empty route
//! (an empty route answered 54k requests/s with logging off, 30k with it on). Two things
//! keep it smaller:
//! - the request span's fields, recorded one by one as the request goes, are appended to
//!   the JSON already written ([`AppendJsonFields`]) rather than parsed and written again
//!   each time (37k requests/s);
//! - lines are written by a thread of their own ([`mod@tracing_appender::non_blocking`]), so
//!   runtime workers hand a line over instead of queueing on stderr's lock for a write
//!   call each. The queue holds 128k lines; when it is full, callers wait rather than
//!   lose lines;
//! - that thread writes what it finds queued in one call, then rests a millisecond
//!   (`Batches`). Woken for every line, it cost a futex wake per request on the sender's
//!   side and a write call per line on its own (a fifth of an empty route's CPU); resting,
//!   it finds tens of lines at a time and senders find it not waiting, so they do not wake
//!   it. A line reaches stderr at most about a millisecond later.

use std::{
    io::{BufWriter, IsTerminal, Stderr, Write},
    time::Duration,
};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{
    EnvFilter,
    field::RecordFields,
    fmt,
    fmt::{
        FormatFields, FormattedFields, MakeWriter,
        format::{Json, JsonFields, Writer},
        writer::BoxMakeWriter,
    },
    prelude::*,
    registry::LookupSpan,
};

use crate::settings::{LogFormat, LogSettings};

/// How long the log thread rests after writing out a batch.
const PACE: Duration = Duration::from_millis(1);

/// stderr as the log thread writes it: lines gather in a buffer and go out in one write
/// call when the thread has emptied its queue (its `flush`), after which it rests for
/// [`PACE`]. See the module docs.
struct Batches {
    out: BufWriter<Stderr>,
}

impl Batches {
    fn new(stderr: Stderr) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, stderr),
        }
    }
}

impl Write for Batches {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.out.write(line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        std::thread::sleep(PACE);
        Ok(())
    }
}

/// Installs the global subscriber and a panic hook that logs through it. With
/// `background_writer` (the long-running `serve` and `worker`), lines are written by a
/// thread of their own: keep the guard until the process ends, since dropping it writes
/// out the lines still queued. One-shot commands write their few lines directly, so none
/// can be left queued when they end, however they end.
pub fn init(
    settings: &LogSettings,
    background_writer: bool,
) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = EnvFilter::try_new(&settings.filter)
        .map_err(|e| anyhow::anyhow!("CANOPY_LOG={:?} is invalid: {e}", settings.filter))?;
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = if background_writer {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("canopy-log")
            .finish(Batches::new(std::io::stderr()));
        (BoxMakeWriter::new(writer), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(json_layer(writer)).try_init()?;
    } else {
        registry
            .with(fmt::layer().compact().with_writer(writer))
            .try_init()?;
    }
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        tracing::error!(panic = payload, location = location.as_deref(), "panic");
    }));
    Ok(guard)
}

/// The layer writing JSON lines: the event's fields flattened, the current span's fields
/// under `span`.
fn json_layer<S, W>(writer: W) -> fmt::Layer<S, AppendJsonFields, fmt::format::Format<Json>, W>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .fmt_fields(AppendJsonFields)
        .with_writer(writer)
}

/// The span fields of JSON lines, as `tracing_subscriber`'s [`JsonFields`] writes them,
/// except that a field recorded later is appended to the object already written instead of
/// parsing it, merging and writing it again (which `JsonFields` does for every `record`, and
/// the request span records five). Keys recorded twice appear twice in the stored text; the
/// line's writer parses it into one object, in which the last value wins, as with
/// `JsonFields`.
pub struct AppendJsonFields;

/// The size of a span's fields past which [`AppendJsonFields`] merges instead of appending.
const COMPACT_AT: usize = 4096;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut added = String::new();
        JsonFields::new().format_fields(Writer::new(&mut added), fields)?;
        let Some(members) = added
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .filter(|members| !members.is_empty())
        else {
            return Ok(());
        };
        let existing = current.fields.trim_end();
        if existing.len() < 2 || !existing.ends_with('}') {
            current.fields = added;
            return Ok(());
        }
        // A span recording again and again (a loop) would grow without bound: past a size,
        // merge as `JsonFields` does, so each key is kept once.
        if existing.len() > COMPACT_AT {
            let mut merged: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(existing).map_err(|_| std::fmt::Error)?;
            let added: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&added).map_err(|_| std::fmt::Error)?;
            merged.extend(added);
            current.fields = serde_json::to_string(&merged).map_err(|_| std::fmt::Error)?;
            return Ok(());
        }
        current.fields.truncate(existing.len() - 1);
        if current.fields.len() > 1 {
            current.fields.push(',');
        }
        current.fields.push_str(members);
        current.fields.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::field::Empty;

    use super::*;

    /// What `emit` logs through the JSON layer of [`init`], as text.
    fn json_lines(emit: impl FnOnce()) -> String {
        // Shared with the subscriber, which the test outlives.
        let written: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let subscriber =
            tracing_subscriber::registry().with(json_layer(move || written.make_writer()));
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(written.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn fields_recorded_later_reach_the_line_as_one_object() {
        let text = json_lines(|| {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                method = "GET",
                route = Empty,
                status = Empty,
                tenant_id = Empty,
            );
            let _entered = span.enter();
            span.record("route", "/v1/products");
            span.record("tenant_id", "t-1");
            span.record("status", 200_u16);
            // Recorded twice: the last value wins.
            span.record("tenant_id", "t-2");
            tracing::info!(quote = "say \"hi\"", "request completed");
        });
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["message"], "request completed");
        assert_eq!(line["quote"], "say \"hi\"");
        assert_eq!(
            line["span"],
            serde_json::json!({
                "name": "request",
                "request_id": "r-1",
                "method": "GET",
                "route": "/v1/products",
                "status": 200,
                "tenant_id": "t-2",
            })
        );
    }

    #[test]
    fn a_span_recording_in_a_loop_stays_bounded() {
        let text = json_lines(|| {
            let span = tracing::info_span!("job", attempt = Empty);
            let _entered = span.enter();
            for attempt in 0..10_000_u64 {
                span.record("attempt", attempt);
            }
            tracing::info!("done");
        });
        assert!(text.len() < 2 * COMPACT_AT, "{} bytes", text.len());
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["span"]["attempt"], 9_999);
    }
}
