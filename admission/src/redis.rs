//! Redis: the pool, and the few ways the app talks to it. Every operation is bounded by
//! [`BUDGET`] (past it the database is asked instead, or the documented failure policy
//! applies), fails with a [`RedisError`], and writes the database's truth depends on are
//! retried in the background ([`retry_in_background`]).

use std::{future::Future, time::Duration};

use bb8_redis::RedisConnectionManager;

/// A pool of multiplexed Redis connections.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// How long one Redis operation may take before the database is asked instead.
pub const BUDGET: Duration = Duration::from_millis(500);

/// Why Redis could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// No connection could be had from the pool.
    #[error(transparent)]
    Pool(#[from] bb8::RunError<redis::RedisError>),
    /// The command failed.
    #[error(transparent)]
    Command(#[from] redis::RedisError),
    /// No answer within [`BUDGET`].
    #[error("timed out")]
    TimedOut,
    /// An answer of a shape the caller cannot use.
    #[error("{0}")]
    UnexpectedReply(String),
    /// Not asked: it failed a moment ago, and callers back off for a while.
    #[error("Redis failed a moment ago")]
    BackingOff,
}

/// Runs one Redis operation within [`BUDGET`].
pub async fn with_redis<'p, T, F, Fut>(redis: &'p RedisPool, op: F) -> Result<T, RedisError>
where
    F: FnOnce(bb8::PooledConnection<'p, RedisConnectionManager>) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    tokio::time::timeout(BUDGET, async {
        let conn = redis.get().await?;
        Ok(op(conn).await?)
    })
    .await
    .unwrap_or(Err(RedisError::TimedOut))
}

/// `MGET keys` within [`BUDGET`].
pub async fn mget(redis: &RedisPool, keys: &[String]) -> Result<Vec<Option<String>>, RedisError> {
    with_redis(redis, |mut conn| async move {
        redis::cmd("MGET")
            .arg(keys)
            .query_async::<Vec<Option<String>>>(&mut *conn)
            .await
    })
    .await
}

/// Tries `attempt` again in the background (after 200 ms, doubling up to 10 s) until it
/// succeeds or `retry_for` has passed: a Redis write that the database's truth depends on
/// must not be lost to a blip. `what` names it in the log.
pub fn retry_in_background<F, Fut>(retry_for: Duration, what: &'static str, attempt: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), RedisError>> + Send,
{
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + retry_for;
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::time::sleep(delay).await;
            match attempt().await {
                Ok(()) => return,
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(%error, "gave up {what}");
                    return;
                }
                Err(_) => delay = (delay * 2).min(Duration::from_secs(10)),
            }
        }
    });
}
