//! Passwords: the policy a new password must meet, and argon2id hashing on a bounded pool
//! of low-priority threads.
//!
//! Hashing is deliberately slow (tens of milliseconds of CPU), so it never runs on the
//! async executor: a [`PasswordHasher`] owns a few dedicated threads (one per core by
//! default) running at the lowest scheduling priority (`SCHED_IDLE` on Linux), and a bounded
//! queue in front of them.
//! A login storm then uses the CPU that request handling leaves idle instead of taking it
//! from other requests, and when the queue is full callers are told to come back later
//! rather than piling up.

use std::{collections::HashSet, sync::Arc, sync::LazyLock};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString},
};
use tokio::sync::{Semaphore, oneshot};

/// Fewest characters (Unicode code points) a password may have.
pub const MIN_LENGTH: usize = 12;
/// Most characters (Unicode code points) a password may have.
pub const MAX_LENGTH: usize = 128;

/// Lowercased common and breached passwords of [`MIN_LENGTH`] or more characters (see
/// `identity/data/README.md` for their source).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
});

/// The rule a refused password breaks. The `Display` text is meant for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// Fewer than [`MIN_LENGTH`] characters.
    #[error("must be at least {MIN_LENGTH} characters long")]
    TooShort,
    /// More than [`MAX_LENGTH`] characters.
    #[error("must be at most {MAX_LENGTH} characters long")]
    TooLong,
    /// On the list of common or breached passwords.
    #[error("is one of the most common or breached passwords; choose another")]
    Common,
}

/// Checks a new password against the policy (ASVS 5.0 §6.2, NIST SP 800-63B): length in
/// code points, any characters, not on the common/breached list; no composition rules.
/// The password is never altered: what is checked is what gets hashed.
pub fn check_policy(password: &str) -> Result<(), PolicyViolation> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(PolicyViolation::TooShort);
    }
    if length > MAX_LENGTH {
        return Err(PolicyViolation::TooLong);
    }
    if COMMON.contains(password.to_lowercase().as_str()) {
        return Err(PolicyViolation::Common);
    }
    Ok(())
}

/// Cost parameters of argon2id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl HashCost {
    /// OWASP's recommended argon2id configuration: 19 MiB, 2 passes, 1 lane.
    pub const OWASP: HashCost = HashCost {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    fn argon2(self) -> Result<Argon2<'static>, HashError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| HashError::Internal(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Why hashing could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are waiting; try again shortly.
    #[error("the password hashing queue is full")]
    Busy,
    /// A bug or a malformed parameter set.
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password (or an unreadable stored hash).
    No,
    /// Right password, stored hash up to date.
    Yes,
    /// Right password, stored hash made with other parameters: store this one instead.
    YesRehashed(String),
}

/// Hashes and verifies passwords off the async executor. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: rayon_core::ThreadPool,
    queue: Semaphore,
    cost: HashCost,
    /// A hash of nothing anyone knows, verified when the account does not exist so that
    /// unknown emails cost the same time as known ones.
    decoy: String,
}

impl PasswordHasher {
    /// `threads` hashing threads at the lowest priority, at most `queue` hashes waiting or
    /// running, hashes made with `cost`.
    pub fn new(threads: usize, queue: usize, cost: HashCost) -> Result<Self, HashError> {
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("password-hash-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| HashError::Internal(e.to_string()))?;
        let decoy = hash_now(cost, "decoy password nobody can know")?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                queue: Semaphore::new(queue.max(1)),
                cost,
                decoy,
            }),
        })
    }

    /// The parameters new hashes are made with.
    pub fn cost(&self) -> HashCost {
        self.inner.cost
    }

    /// A PHC string (`$argon2id$v=19$m=…`) for `password`.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let cost = self.inner.cost;
        let password = password.to_owned();
        self.run(move || hash_now(cost, &password)).await?
    }

    /// Checks `password` against `stored` (a PHC string). With `stored` `None` (no such
    /// account) the work is done against a decoy hash and the answer is always
    /// [`Verified::No`].
    pub async fn verify(
        &self,
        password: &str,
        stored: Option<&str>,
    ) -> Result<Verified, HashError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.inner.decoy).to_owned();
        let password = password.to_owned();
        let cost = self.inner.cost;
        let verified = self
            .run(move || -> Result<Verified, HashError> {
                let Ok(parsed) = PasswordHash::new(&stored) else {
                    tracing::warn!("a stored password hash could not be parsed");
                    return Ok(Verified::No);
                };
                let Ok(params) = Params::try_from(&parsed) else {
                    return Ok(Verified::No);
                };
                let algorithm = Algorithm::try_from(parsed.algorithm).unwrap_or_default();
                let version = parsed
                    .version
                    .and_then(|v| Version::try_from(v).ok())
                    .unwrap_or_default();
                let checker = Argon2::new(algorithm, version, params.clone());
                if checker
                    .verify_password(password.as_bytes(), &parsed)
                    .is_err()
                {
                    return Ok(Verified::No);
                }
                let current = algorithm == Algorithm::Argon2id
                    && version == Version::V0x13
                    && params.m_cost() == cost.memory_kib
                    && params.t_cost() == cost.iterations
                    && params.p_cost() == cost.parallelism;
                if current {
                    Ok(Verified::Yes)
                } else {
                    hash_now(cost, &password).map(Verified::YesRehashed)
                }
            })
            .await??;
        Ok(if known { verified } else { Verified::No })
    }

    /// Runs `work` on the pool once a queue slot is free (or fails with [`HashError::Busy`]).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = self
            .inner
            .queue
            .try_acquire()
            .map_err(|_| HashError::Busy)?;
        let (tx, rx) = oneshot::channel();
        // The work keeps the caller's span, so whatever it logs names the request.
        let span = tracing::Span::current();
        self.inner.pool.spawn(move || {
            let _entered = span.enter();
            let _ = tx.send(work());
        });
        rx.await
            .map_err(|_| HashError::Internal("the hashing thread panicked".into()))
    }
}

/// Puts the calling (hashing) thread below everything else. On Linux that is `SCHED_IDLE`:
/// any other thread that wakes up takes the core at once, where a thread at nice 19 still
/// gets to finish a slice first, which showed as the reads' p99 under a login storm. Best
/// effort: some sandboxes refuse the change, and then hashing runs at nice 19 or as it is.
fn lower_priority() {
    use thread_priority::{ThreadPriority, set_current_thread_priority};
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
        match idle {
            Ok(()) => return,
            Err(error) => tracing::debug!(?error, "SCHED_IDLE refused; trying nice 19"),
        }
    }
    if let Err(error) = set_current_thread_priority(ThreadPriority::Min) {
        tracing::debug!(?error, "could not lower the hashing thread's priority");
    }
}

/// Hashes synchronously on the current thread.
pub fn hash_now(cost: HashCost, password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| HashError::Internal(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Internal(e.to_string()))?;
    cost.argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashCost = HashCost {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_only_when_nothing_else_would() {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy,
        };
        let hasher = PasswordHasher::new(1, 4, CHEAP).expect("pool");
        let policy = hasher
            .run(thread_schedule_policy)
            .await
            .expect("ran")
            .expect("policy readable");
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        // The caller's thread is untouched.
        assert_ne!(thread_schedule_policy().expect("readable"), policy);
    }

    #[test]
    fn policy_counts_code_points_and_names_the_rule() {
        assert_eq!(check_policy("short"), Err(PolicyViolation::TooShort));
        // 11 characters, 33 bytes: still too short.
        assert_eq!(check_policy("ééééééééééé"), Err(PolicyViolation::TooShort));
        assert_eq!(check_policy("éééééééééééé"), Ok(()));
        assert_eq!(
            check_policy(&"x".repeat(129)),
            Err(PolicyViolation::TooLong)
        );
        assert_eq!(check_policy(&"€".repeat(128)), Ok(()));
        // Spaces and emoji are characters like any other; no composition rules.
        assert_eq!(check_policy("correct horse battery 🐴"), Ok(()));
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        let first = include_str!("../data/common-passwords.txt")
            .lines()
            .next()
            .expect("the list is not empty");
        assert_eq!(check_policy(first), Err(PolicyViolation::Common));
        assert_eq!(
            check_policy(&first.to_uppercase()),
            Err(PolicyViolation::Common)
        );
        assert!(COMMON.len() > 1000, "{} entries", COMMON.len());
    }

    #[tokio::test]
    async fn verifies_exactly_as_typed_and_upgrades_weaker_hashes() {
        let hasher = PasswordHasher::new(1, 8, CHEAP).unwrap();
        let stored = hasher.hash("Correct Horse Battery").await.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{stored}"
        );
        assert_eq!(
            hasher
                .verify("Correct Horse Battery", Some(&stored))
                .await
                .unwrap(),
            Verified::Yes
        );
        for wrong in [
            "correct horse battery",
            "Correct Horse Batter",
            "Correct Horse Battery ",
        ] {
            assert_eq!(
                hasher.verify(wrong, Some(&stored)).await.unwrap(),
                Verified::No,
                "{wrong}"
            );
        }
        // No truncation: a long password differing only at its end is another password.
        let long = "a".repeat(127) + "b";
        let long_hash = hasher.hash(&long).await.unwrap();
        assert_eq!(
            hasher
                .verify(&("a".repeat(127) + "c"), Some(&long_hash))
                .await
                .unwrap(),
            Verified::No
        );

        let weaker = hash_now(
            HashCost {
                memory_kib: 512,
                ..CHEAP
            },
            "Correct Horse Battery",
        )
        .unwrap();
        match hasher
            .verify("Correct Horse Battery", Some(&weaker))
            .await
            .unwrap()
        {
            Verified::YesRehashed(new) => {
                assert!(new.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{new}");
                assert_eq!(
                    hasher
                        .verify("Correct Horse Battery", Some(&new))
                        .await
                        .unwrap(),
                    Verified::Yes
                );
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify_and_garbage_hashes_are_refused() {
        let hasher = PasswordHasher::new(1, 8, CHEAP).unwrap();
        assert_eq!(
            hasher
                .verify("decoy password nobody can know", None)
                .await
                .unwrap(),
            Verified::No
        );
        assert_eq!(
            hasher
                .verify("anything at all", Some("not a hash"))
                .await
                .unwrap(),
            Verified::No
        );
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_instead_of_waiting() {
        let hasher = PasswordHasher::new(1, 1, HashCost::OWASP).unwrap();
        let slow = hasher.hash("first password in the queue");
        let fast = hasher.hash("second password in the queue");
        let (a, b) = tokio::join!(slow, fast);
        assert!(a.is_ok());
        assert!(matches!(b, Err(HashError::Busy)), "{b:?}");
    }

    #[tokio::test]
    async fn hashing_work_logs_within_the_callers_span() {
        use tracing_subscriber::fmt::MakeWriter;
        // What the subscriber writes, shared with the test (which outlives it).
        let written: &'static std::sync::Mutex<Vec<u8>> = Box::leak(Box::default());
        // Global: the work runs on the pool's threads, not on this one.
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || written.make_writer())
                .finish(),
        )
        .unwrap();
        let hasher = PasswordHasher::new(1, 4, CHEAP).unwrap();
        let span = tracing::info_span!("request", request_id = "r-42");
        let verified = tracing::Instrument::instrument(
            hasher.verify("anything", Some("not a PHC string")),
            span,
        )
        .await
        .unwrap();
        assert_eq!(verified, Verified::No);
        let log = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("a stored password hash could not be parsed"))
            .unwrap_or_else(|| panic!("the warning is logged: {log}"));
        assert!(line.contains("request{request_id=\"r-42\"}"), "{line}");
    }
}
