//! The revocation list: revoked sessions, revoked tenant API keys and blocked users
//! (deactivated, banned), in Redis
//! with a TTL equal to the refresh-token lifetime, checked on every authenticated request
//! in one round trip.
//!
//! The database stays the source of truth. A status change or revocation commits there
//! first and is written to Redis after. Every check also reads a per-tenant *ready* marker,
//! set only once the tenant's list has been rebuilt from the database: should Redis lose
//! its data (a flush, a failover to an empty replica), the marker is gone and requests are
//! checked against the database until the list is rebuilt. Should Redis be unreachable,
//! the check falls back to the database; should both be down, the request is refused with
//! a 503, never let through unchecked. A write made while Redis is unreachable is retried
//! in the background, and the list is not trusted until it gets through: this instance
//! checks that tenant against the database meanwhile, and every instance checks against the
//! database for [`DISTRUST_AFTER_FAILURE`] after Redis last failed it (another instance's
//! write from the same outage may still be on its way). An API key's id stands where a session id stands
//! (its creator where the user stands), so revoking a key is announced, checked and
//! rebuilt exactly like ending a session; only the database check differs ([`Credential`]). A token Redis lists as revoked is confirmed against
//! the database too (those are rare), so a stale entry cannot lock anyone out.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tenancy::{TenantDb, TenantId};
use uuid::Uuid;

use crate::{
    AdmissionError,
    redis::{RedisError, RedisPool, retry_in_background, with_redis},
};

/// Checks and maintains the revocation list.
///
/// Every revocation is also announced on [`announcement_channel`], so that live realtime
/// connections made with the credential close at once on every instance.
pub struct Revocations {
    redis: RedisPool,
    tenant_db: TenantDb,
    ttl: Duration,
    retry_for: Duration,
    rebuilding: Mutex<HashSet<TenantId>>,
    /// Tenants with a write this instance could not make yet (retried in the background),
    /// until it is made or its tokens are expired: their list in Redis may lack it, so they
    /// are checked against the database.
    unsure: Mutex<HashMap<TenantId, (usize, Instant)>>,
    /// Until when, after Redis last failed this instance, every check goes to the database:
    /// another instance's write made during the outage may still be on its way.
    distrust_until: Mutex<Option<Instant>>,
}

/// How long after Redis last failed a check this instance keeps checking the database: more
/// than the longest wait between two retries of a write (10 s), so by then every instance's
/// write from the outage is in.
pub const DISTRUST_AFTER_FAILURE: Duration = Duration::from_secs(12);

fn session_key(tenant: TenantId, session: Uuid) -> String {
    format!("canopy:t:{tenant}:revoked:session:{session}")
}

fn user_key(tenant: TenantId, user: Uuid) -> String {
    format!("canopy:t:{tenant}:revoked:user:{user}")
}

fn ready_key(tenant: TenantId) -> String {
    format!("canopy:t:{tenant}:revoked:ready")
}

/// What a request authenticated with: a session (an access token's `sid`) or a tenant API
/// key. Either one's id is listed under the same kind of entry (ids are random UUIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A session.
    Session(Uuid),
    /// A tenant API key.
    ApiKey(Uuid),
}

impl Credential {
    /// The id the revocation list knows it by.
    pub fn id(self) -> Uuid {
        match self {
            Self::Session(id) | Self::ApiKey(id) => id,
        }
    }
}

/// Prefix of the channels announcing revocations to live connections (`api`'s realtime
/// hub listens on them): `canopy:rt:c:<tenant id>`, named from the id only.
pub const ANNOUNCEMENTS_PREFIX: &str = "canopy:rt:c:";

/// The channel of `tenant`'s revocation announcements.
pub fn announcement_channel(tenant: TenantId) -> String {
    format!("{ANNOUNCEMENTS_PREFIX}{tenant}")
}

/// Most credential ids one announcement carries (more are split over several).
const ANNOUNCED_PER_MESSAGE: usize = 200;

/// What a revocation announcement says, ids only: a blocked user (all their connections
/// close), and revoked credentials (sessions or API keys: the connections made with them
/// close). Its wire form is `<user id or ->` followed by the credential ids, separated by
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The user who was blocked, if one was.
    pub user: Option<Uuid>,
    /// Sessions and API keys that were revoked.
    pub credentials: Vec<Uuid>,
}

impl Announcement {
    /// The wire form.
    pub fn encode(&self) -> String {
        let mut text = self.user.map_or_else(|| "-".to_owned(), |u| u.to_string());
        for id in &self.credentials {
            text.push(' ');
            text.push_str(&id.to_string());
        }
        text
    }

    /// Reads the wire form; `None` when it is not one (or too long to be ours).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let user = match parts.next()? {
            "-" => None,
            id => Some(Uuid::try_parse(id).ok()?),
        };
        let credentials = parts
            .map(|id| Uuid::try_parse(id).ok())
            .collect::<Option<Vec<_>>>()?;
        (credentials.len() <= ANNOUNCED_PER_MESSAGE).then_some(Self { user, credentials })
    }
}

/// One write to the list.
#[derive(Debug, Clone)]
enum Write {
    Set(String),
    Del(String),
}

impl Revocations {
    /// Entries live for `ttl` (the refresh-token lifetime); a write Redis refused is retried
    /// for `retry_for` (the access-token lifetime: after that no token it concerns is valid,
    /// and refreshes always read the database).
    pub fn new(redis: RedisPool, tenant_db: TenantDb, ttl: Duration, retry_for: Duration) -> Self {
        Self {
            redis,
            tenant_db,
            ttl,
            retry_for,
            rebuilding: Mutex::new(HashSet::new()),
            unsure: Mutex::new(HashMap::new()),
            distrust_until: Mutex::new(None),
        }
    }

    /// Whether a list that says nothing of a credential may be trusted for `tenant` now.
    fn trusts_list(&self, tenant: TenantId) -> bool {
        let now = Instant::now();
        let distrusted = self
            .distrust_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| now < until);
        let mut unsure = self.unsure.lock().unwrap_or_else(|e| e.into_inner());
        unsure.retain(|_, (_, until)| now < *until);
        !distrusted && !unsure.contains_key(&tenant)
    }

    /// The keys [`Self::check_looked_up`] needs, in order.
    pub fn keys(tenant: TenantId, user: Uuid, session: Uuid) -> [String; 3] {
        [
            ready_key(tenant),
            session_key(tenant, session),
            user_key(tenant, user),
        ]
    }

    /// [`Self::check_looked_up`] with its own round trip (for checks outside a request, such
    /// as a live connection's periodic re-check).
    pub async fn check(
        self: &Arc<Self>,
        tenant: TenantId,
        user: Uuid,
        credential: Credential,
    ) -> Result<(), AdmissionError> {
        let keys = Self::keys(tenant, user, credential.id());
        let looked_up = crate::redis::mget(&self.redis, &keys).await;
        self.check_looked_up(tenant, user, credential, looked_up.as_deref())
            .await
    }

    /// Whether `credential` of `user` may be used (`Ok`, [`AdmissionError::Revoked`], or
    /// [`AdmissionError::SessionUncheckable`] when neither Redis nor the database can say),
    /// given the values of [`Self::keys`] (fetched by the caller in the same round trip as
    /// others) or the error fetching them.
    pub async fn check_looked_up(
        self: &Arc<Self>,
        tenant: TenantId,
        user: Uuid,
        credential: Credential,
        looked_up: Result<&[Option<String>], &RedisError>,
    ) -> Result<(), AdmissionError> {
        match looked_up {
            Ok([Some(_), None, None]) if self.trusts_list(tenant) => return Ok(()),
            // Ready and silent, but a write from a Redis outage may not be in it yet.
            Ok([Some(_), None, None]) => {}
            // Listed: confirmed against the database, which has every revocation. (An entry
            // can outlive its reason when a rebuild races a reactivation; such a user must
            // not stay locked out.)
            Ok([Some(_), ..]) => {}
            Ok(_) => {
                tracing::info!(%tenant, "revocation list not ready; checking the database");
                self.spawn_rebuild(tenant);
            }
            Err(error) => {
                tracing::warn!(%error, "revocation list unreachable; checking the database");
                *self
                    .distrust_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + DISTRUST_AFTER_FAILURE);
            }
        }
        let valid = async {
            let mut tx = self.tenant_db.begin(tenant).await?;
            let valid = match credential {
                Credential::Session(session) => {
                    identity::store::session_is_valid(&mut tx, user, session).await
                }
                Credential::ApiKey(key) => {
                    identity::api_keys::key_is_valid(&mut tx, user, key).await
                }
            }
            .map_err(anyhow::Error::from)?;
            tx.commit().await?;
            anyhow::Ok(valid)
        }
        .await
        .map_err(|error| {
            tracing::error!(
                error = format!("{error:#}"),
                "neither Redis nor PostgreSQL could check a token"
            );
            AdmissionError::SessionUncheckable
        })?;
        if valid {
            Ok(())
        } else {
            Err(AdmissionError::Revoked)
        }
    }

    /// Records that `sessions` were revoked (and announces it to live connections).
    pub async fn revoke_sessions(self: &Arc<Self>, tenant: TenantId, sessions: &[Uuid]) {
        let writes = sessions
            .iter()
            .map(|s| Write::Set(session_key(tenant, *s)))
            .collect();
        self.write(tenant, writes).await;
        self.announce(tenant, None, sessions).await;
    }

    /// Records that `user` is blocked (and their `sessions` revoked), and announces it to
    /// live connections.
    pub async fn block_user(self: &Arc<Self>, tenant: TenantId, user: Uuid, sessions: &[Uuid]) {
        let writes = std::iter::once(Write::Set(user_key(tenant, user)))
            .chain(sessions.iter().map(|s| Write::Set(session_key(tenant, *s))))
            .collect();
        self.write(tenant, writes).await;
        self.announce(tenant, Some(user), sessions).await;
    }

    /// Tells every instance's live connections (through [`announcement_channel`]) that these
    /// credentials, or this user, may no longer be used. Called after the database commit
    /// (as every write here). Best effort: pub/sub is fire-and-forget, and connections
    /// re-check their credential periodically anyway.
    async fn announce(&self, tenant: TenantId, user: Option<Uuid>, credentials: &[Uuid]) {
        let mut messages: Vec<Announcement> = credentials
            .chunks(ANNOUNCED_PER_MESSAGE)
            .map(|chunk| Announcement {
                user: None,
                credentials: chunk.to_vec(),
            })
            .collect();
        match messages.first_mut() {
            Some(first) => first.user = user,
            None if user.is_some() => messages.push(Announcement {
                user,
                credentials: Vec::new(),
            }),
            None => return,
        }
        let channel = announcement_channel(tenant);
        let published = with_redis(&self.redis, |mut conn| async move {
            let mut pipe = redis::pipe();
            for message in &messages {
                pipe.cmd("PUBLISH")
                    .arg(&channel)
                    .arg(message.encode())
                    .ignore();
            }
            pipe.query_async::<()>(&mut *conn).await
        })
        .await;
        if let Err(error) = published {
            tracing::warn!(%tenant, %error, "could not announce a revocation to live connections; they re-check periodically");
        }
    }

    /// Lifts the block on `user` (their old sessions stay revoked).
    pub async fn unblock_user(self: &Arc<Self>, tenant: TenantId, user: Uuid) {
        self.write(tenant, vec![Write::Del(user_key(tenant, user))])
            .await;
    }

    /// Applies `writes` to `tenant`'s list; on failure keeps retrying in the background, so
    /// that a blip does not leave a revoked token honoured while the list is otherwise
    /// intact, and checks `tenant` against the database until a retry gets through.
    async fn write(self: &Arc<Self>, tenant: TenantId, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let Err(error) = self.try_write(&writes).await else {
            return;
        };
        tracing::warn!(%error, "revocation list write failed; retrying in the background");
        {
            let mut unsure = self.unsure.lock().unwrap_or_else(|e| e.into_inner());
            let entry = unsure.entry(tenant).or_insert((0, Instant::now()));
            *entry = (entry.0 + 1, Instant::now() + self.retry_for);
        }
        let this = self.clone();
        retry_in_background(
            self.retry_for,
            "writing to the revocation list",
            move || {
                let (this, writes) = (this.clone(), writes.clone());
                async move {
                    this.try_write(&writes).await?;
                    let mut unsure = this.unsure.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((pending, _)) = unsure.get_mut(&tenant) {
                        *pending -= 1;
                        if *pending == 0 {
                            unsure.remove(&tenant);
                        }
                    }
                    Ok(())
                }
            },
        );
    }

    async fn try_write(&self, writes: &[Write]) -> Result<(), RedisError> {
        let ttl = self.ttl.as_secs().max(1);
        with_redis(&self.redis, |mut conn| async move {
            let mut pipe = redis::pipe();
            for write in writes {
                match write {
                    Write::Set(key) => pipe.cmd("SET").arg(key).arg(1).arg("EX").arg(ttl),
                    Write::Del(key) => pipe.cmd("DEL").arg(key),
                }
                .ignore();
            }
            pipe.query_async::<()>(&mut *conn).await
        })
        .await
    }

    /// Rebuilds `tenant`'s list from the database in the background (once at a time).
    fn spawn_rebuild(self: &Arc<Self>, tenant: TenantId) {
        {
            let mut rebuilding = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
            if !rebuilding.insert(tenant) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.rebuild(tenant).await {
                tracing::warn!(%tenant, error = format!("{error:#}"), "rebuilding the revocation list failed");
            }
            this.rebuilding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&tenant);
        });
    }

    /// Writes every blocked user and every session and API key revoked within the TTL (an
    /// API key revoked longer ago is refused by its row, which no cache keeps that long),
    /// then the ready
    /// marker. Revocations committed meanwhile write their own entries, so none is lost.
    pub async fn rebuild(&self, tenant: TenantId) -> anyhow::Result<()> {
        let since = chrono::Utc::now() - chrono::Duration::from_std(self.ttl)?;
        let mut tx = self.tenant_db.begin(tenant).await?;
        let (users, mut sessions) = identity::store::revocations(&mut tx, since).await?;
        sessions.extend(identity::api_keys::revoked_since(&mut tx, since).await?);
        tx.commit().await?;
        let writes: Vec<Write> = users
            .iter()
            .map(|u| Write::Set(user_key(tenant, *u)))
            .chain(sessions.iter().map(|s| Write::Set(session_key(tenant, *s))))
            .collect();
        for chunk in writes.chunks(1000) {
            self.try_write(chunk).await.map_err(anyhow::Error::msg)?;
        }
        let mut conn = self.redis.get().await?;
        redis::cmd("SET")
            .arg(ready_key(tenant))
            .arg(1)
            .query_async::<()>(&mut *conn)
            .await?;
        tracing::info!(%tenant, users = users.len(), sessions = sessions.len(), "revocation list rebuilt");
        Ok(())
    }
}
