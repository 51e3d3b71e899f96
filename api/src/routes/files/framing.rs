//! The framing of an upload's multipart body, checked as the bytes arrive, before the
//! parser sees them.
//!
//! multer bounds a field's data and the whole stream when asked, but not a part's header
//! section: it buffers until the blank line that ends the headers, however far away that
//! is (a 48 MiB header line was once buffered whole), and the same holds for the preamble
//! before the first boundary. So every byte of the body passes through [`Framing`] first,
//! which follows the delimiters itself and refuses a body longer than the plan's upload
//! size (headers, boundaries and fields included), a preamble or a part's headers longer
//! than [`Limits::headers`], and more than [`Limits::parts`] parts. Memory stays bounded by
//! what is read at a time plus those limits, whatever the client sends.

use std::{
    io,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use memchr::memmem;

/// What a body's framing may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes in the whole body.
    pub total: u64,
    /// Most bytes in the preamble, and in each part's header section (from its delimiter
    /// to the blank line that ends its headers).
    pub headers: u64,
    /// Most parts.
    pub parts: usize,
}

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The body is longer than [`Limits::total`].
    #[error("the body is longer than allowed")]
    TooLarge,
    /// The text before the first boundary is longer than [`Limits::headers`].
    #[error("the text before the first boundary is too long")]
    Preamble,
    /// A part's header section is longer than [`Limits::headers`].
    #[error("a part's headers are too long")]
    Headers,
    /// The body has more than [`Limits::parts`] parts.
    #[error("the form has too many parts")]
    Parts,
    /// No byte arrived for [`Framing`]'s idle timeout.
    #[error("no data for 60 seconds")]
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first delimiter.
    Preamble,
    /// Just past a delimiter: `--` closes the body, anything else starts a part.
    Delimited,
    /// A part's headers, up to the blank line.
    Headers,
    /// A part's data, up to the next delimiter.
    Data,
    /// Past the closing delimiter: ignored (the parser stops there).
    Epilogue,
}

/// Follows the delimiters of one multipart body; see the module docs.
#[derive(Debug)]
pub struct Framing {
    /// `\r\n--<boundary>`.
    delimiter: Vec<u8>,
    limits: Limits,
    stage: Stage,
    /// Bytes of the current stage before `carry`.
    stage_bytes: u64,
    /// The last bytes seen, which may begin a delimiter or a blank line the next chunk
    /// completes.
    carry: Vec<u8>,
    /// Reused to join `carry` and a chunk.
    window: Vec<u8>,
    parts: usize,
    total: u64,
    refused: Option<Refusal>,
}

impl Framing {
    /// The framing of a body whose parts are separated by `boundary` (as the
    /// `Content-Type` gives it).
    pub fn new(boundary: &str, limits: Limits) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Self {
            delimiter,
            limits,
            stage: Stage::Preamble,
            stage_bytes: 0,
            // The first delimiter may open the body, with no line break before it.
            carry: b"\r\n".to_vec(),
            window: Vec::new(),
            parts: 0,
            total: 0,
            refused: None,
        }
    }

    /// Checks the next `chunk` of the body (every refusal is final).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let outcome = self.scan(chunk);
        if let Err(refused) = outcome {
            self.refused = Some(refused);
        }
        outcome
    }

    fn scan(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        self.total += chunk.len() as u64;
        if self.total > self.limits.total {
            return Err(Refusal::TooLarge);
        }
        if self.stage == Stage::Epilogue {
            return Ok(());
        }
        let mut window = std::mem::take(&mut self.window);
        window.clear();
        window.append(&mut self.carry);
        window.extend_from_slice(chunk);
        let outcome = self.scan_window(&window);
        self.window = window;
        outcome
    }

    fn scan_window(&mut self, window: &[u8]) -> Result<(), Refusal> {
        let limit = self.limits.headers;
        let mut pos = 0;
        loop {
            let rest = &window[pos..];
            match self.stage {
                Stage::Epilogue => return Ok(()),
                Stage::Preamble | Stage::Data => {
                    let preamble = self.stage == Stage::Preamble;
                    match memmem::find(rest, &self.delimiter) {
                        Some(at) => {
                            if preamble && self.stage_bytes + at as u64 > limit {
                                return Err(Refusal::Preamble);
                            }
                            pos += at + self.delimiter.len();
                            self.enter(Stage::Delimited);
                        }
                        None => {
                            let kept = self.keep(rest, self.delimiter.len() - 1);
                            if preamble && self.stage_bytes + kept > limit {
                                return Err(Refusal::Preamble);
                            }
                            return Ok(());
                        }
                    }
                }
                Stage::Delimited => {
                    if rest.len() < 2 {
                        self.carry.extend_from_slice(rest);
                        return Ok(());
                    }
                    if rest.starts_with(b"--") {
                        self.enter(Stage::Epilogue);
                        return Ok(());
                    }
                    self.parts += 1;
                    if self.parts > self.limits.parts {
                        return Err(Refusal::Parts);
                    }
                    self.enter(Stage::Headers);
                }
                Stage::Headers => match memmem::find(rest, b"\r\n\r\n") {
                    Some(at) => {
                        if self.stage_bytes + at as u64 + 4 > limit {
                            return Err(Refusal::Headers);
                        }
                        pos += at + 4;
                        self.enter(Stage::Data);
                    }
                    None => {
                        let kept = self.keep(rest, 3);
                        if self.stage_bytes + kept > limit {
                            return Err(Refusal::Headers);
                        }
                        return Ok(());
                    }
                },
            }
        }
    }

    fn enter(&mut self, stage: Stage) {
        self.stage = stage;
        self.stage_bytes = 0;
    }

    /// Counts `rest` into the current stage but for its last `tail` bytes, which are kept
    /// for the next chunk; returns how many were kept.
    fn keep(&mut self, rest: &[u8], tail: usize) -> u64 {
        let tail = tail.min(rest.len());
        self.stage_bytes += (rest.len() - tail) as u64;
        self.carry.extend_from_slice(&rest[rest.len() - tail..]);
        tail as u64
    }
}

/// `body` with every chunk checked by `framing`, and cut off when no byte arrives for
/// `idle`. The first refusal is recorded in `refused` (for the caller to tell the client
/// why) and ends the stream with an error.
pub fn guarded<S>(
    body: S,
    framing: Framing,
    idle: Duration,
    refused: Arc<OnceLock<Refusal>>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
{
    stream::unfold(Some((body, framing)), move |state| {
        let refused = refused.clone();
        async move {
            let (mut body, mut framing) = state?;
            let refuse = |refusal: Refusal| {
                let _ = refused.set(refusal);
                Some((Err(io::Error::other(refusal)), None))
            };
            match tokio::time::timeout(idle, body.next()).await {
                Err(_) => refuse(Refusal::Idle),
                Ok(None) => None,
                Ok(Some(Err(error))) => Some((Err(error), None)),
                Ok(Some(Ok(chunk))) => match framing.feed(&chunk) {
                    Ok(()) => Some((Ok(chunk), Some((body, framing)))),
                    Err(refusal) => refuse(refusal),
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        total: 1 << 20,
        headers: 64,
        parts: 3,
    };

    fn part(name: &str, data: &str) -> String {
        format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{data}\r\n")
    }

    /// The outcome of `body` fed whole, and fed split at every position: the same.
    fn check(body: &str, limits: Limits) -> Result<(), Refusal> {
        let feed = |pieces: &[&[u8]]| {
            let mut framing = Framing::new("XyZ", limits);
            pieces.iter().try_for_each(|piece| framing.feed(piece))
        };
        let whole = feed(&[body.as_bytes()]);
        let bytes = body.as_bytes();
        for at in 0..=bytes.len() {
            assert_eq!(feed(&[&bytes[..at], &bytes[at..]]), whole, "split at {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed(&bytewise), whole, "byte by byte");
        whole
    }

    #[test]
    fn well_formed_forms_pass() {
        let body = format!("{}{}--XyZ--\r\n", part("name", "a"), part("file", "bytes"));
        assert_eq!(check(&body, LIMITS), Ok(()));
        // Data may hold anything but the delimiter, and a preamble may precede it.
        let body = format!(
            "preamble\r\n{}--XyZ--\r\nepilogue of any length {}",
            part("file", "--XyZ-ish \r\n\r\n -- XyZ"),
            "x".repeat(500)
        );
        assert_eq!(check(&body, LIMITS), Ok(()));
    }

    #[test]
    fn long_headers_are_refused_wherever_the_chunks_end() {
        let long = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\nx\r\n--XyZ--",
            "n".repeat(40)
        );
        assert_eq!(check(&long, LIMITS), Err(Refusal::Headers));
        // A header line that never ends.
        let endless = format!("--XyZ\r\nX-Pad: {}", "a".repeat(200));
        assert_eq!(check(&endless, LIMITS), Err(Refusal::Headers));
        // The second part's headers count on their own.
        let second = format!(
            "{}--XyZ\r\nX-Pad: {}\r\n\r\nx",
            part("a", "1"),
            "a".repeat(70)
        );
        assert_eq!(check(&second, LIMITS), Err(Refusal::Headers));
        let preamble = format!("{}{}", "p".repeat(100), part("file", "x"));
        assert_eq!(check(&preamble, LIMITS), Err(Refusal::Preamble));
    }

    #[test]
    fn parts_and_bytes_are_counted() {
        let four = format!(
            "{}{}{}{}--XyZ--",
            part("a", "1"),
            part("b", "2"),
            part("c", "3"),
            part("d", "4")
        );
        assert_eq!(check(&four, LIMITS), Err(Refusal::Parts));
        let three = format!(
            "{}{}{}--XyZ--",
            part("a", "1"),
            part("b", "2"),
            part("c", "3")
        );
        assert_eq!(check(&three, LIMITS), Ok(()));
        let body = format!("{}--XyZ--", part("file", &"x".repeat(1000)));
        let exact = Limits {
            total: body.len() as u64,
            ..LIMITS
        };
        assert_eq!(check(&body, exact), Ok(()));
        let short = Limits {
            total: body.len() as u64 - 1,
            ..LIMITS
        };
        assert_eq!(check(&body, short), Err(Refusal::TooLarge));
    }

    #[tokio::test]
    async fn a_refusal_ends_the_stream_and_is_recorded() {
        let chunks: Vec<Result<Bytes, io::Error>> = vec![
            Ok(Bytes::from_static(b"--XyZ\r\nX-Pad: ")),
            Ok(Bytes::from(vec![b'a'; 100])),
            Ok(Bytes::from_static(b"never read")),
        ];
        let refused = Arc::new(OnceLock::new());
        let mut body = Box::pin(guarded(
            stream::iter(chunks),
            Framing::new("XyZ", LIMITS),
            Duration::from_secs(60),
            refused.clone(),
        ));
        assert!(matches!(body.next().await, Some(Ok(_))));
        assert!(matches!(body.next().await, Some(Err(_))));
        assert!(body.next().await.is_none());
        assert_eq!(refused.get(), Some(&Refusal::Headers));
    }
}
