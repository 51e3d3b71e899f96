//! This instance's live connections and the one Redis subscriber that feeds them.
//!
//! A [`Hub`] registers each connection under its tenant, user and credential (a session id
//! or an API key id) and gives it a bounded outgoing queue. Fan-out never waits: an event is
//! offered to each subscribed connection of its tenant with `try_send`, and a connection
//! whose queue is full is cut off ([`Close::SlowConsumer`]) rather than buffered without
//! bound or allowed to hold up the others. Whether the principal may see an event is
//! decided at delivery ([`Connection::next`]), against the permission cache, so a revoked
//! permission stops delivery at once.
//!
//! [`listen`] keeps one pub/sub connection per instance (reconnecting, with a readiness
//! marker as the tenant listener has): `PSUBSCRIBE canopy:rt:*` for the tenants' events
//! (`canopy:rt:t:<tenant>`) and revocation announcements (`canopy:rt:c:<tenant>`, published
//! by `admission::revocation`), plus `canopy:tenants:changed`. The tenant is taken from the
//! channel's name, never from a payload. Pub/sub is fire-and-forget, so every connection
//! also re-checks its credential and its tenant every [`HubSettings::recheck`], every
//! second while the subscription is not known to be live, and at once after it comes
//! (back) up.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use admission::{
    AdmissionError,
    permissions::Permissions,
    revocation::{ANNOUNCEMENTS_PREFIX, Announcement, Credential, Revocations},
    tenants::{TENANT_CHANGES_CHANNEL, TenantKey, TenantResolver},
};
use futures_util::StreamExt;
use rbac::{PermissionSet, catalog::NOT_FOR_API_KEYS};
use secrecy::{ExposeSecret, SecretString};
use tenancy::{TenantId, TenantStatus};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use uuid::Uuid;

use crate::{
    events::{CHANNEL_PREFIX, EventKind, EventSet, MAX_PAYLOAD, tenant_of_events_channel},
    protocol::{Close, ServerFrame},
};

/// Most queued events one [`Connection::next`] hands out at once.
const MAX_BATCH: usize = 64;

/// How often connections re-check while the subscription is not known to be live.
const UNLIVE_RECHECK: Duration = Duration::from_secs(1);

/// The hub's bounds.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Capacity of each connection's outgoing queue (`CANOPY_REALTIME_QUEUE`).
    pub queue: usize,
    /// Most connections of one user on this instance (`CANOPY_REALTIME_MAX_PER_USER`).
    pub max_per_user: usize,
    /// How often each connection re-checks its credential (`CANOPY_REALTIME_RECHECK`).
    pub recheck: Duration,
}

/// What the hub reports, for metrics (`api`'s `Metrics` implements it).
pub trait Observer: Send + Sync + 'static {
    /// A connection was registered.
    fn connection_opened(&self);
    /// A connection ended, for `reason` (a [`Close::reason`], or `client_closed`).
    fn connection_closed(&self, reason: &'static str);
    /// An event was enqueued on this instance `latency` after it was published.
    fn fanned_out(&self, latency: Duration);
}

/// An event on its way to connections: its kind (for the checks at delivery) and its frame.
#[derive(Debug)]
pub struct Delivery {
    kind: EventKind,
    text: Arc<str>,
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The instance is shutting down.
    GoingAway,
    /// The user has `allowed` connections on this instance already.
    PerUser {
        /// The limit.
        allowed: usize,
    },
    /// The tenant has `allowed` connections on this instance already (its plan's limit).
    PerTenant {
        /// The limit.
        allowed: u64,
    },
}

/// Who a new connection belongs to.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The tenant.
    pub tenant: TenantId,
    /// The user (an API key's creator).
    pub user: Uuid,
    /// The session or API key it authenticated with.
    pub credential: Credential,
    /// For an API key: its permissions (what the connection receives is bounded by them).
    pub key_permissions: Option<PermissionSet>,
    /// The tenant plan's `realtime_connections` (none: unlimited).
    pub tenant_limit: Option<u64>,
    /// The kinds subscribed from the start.
    pub events: Vec<EventKind>,
}

struct Entry {
    user: Uuid,
    credential: Uuid,
    events: Arc<EventSet>,
    queue: mpsc::Sender<Arc<Delivery>>,
    close: Arc<watch::Sender<Option<Close>>>,
}

/// Closes a connection for `why`; the first reason sticks.
fn signal(close: &watch::Sender<Option<Close>>, why: Close) {
    close.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(why);
            true
        } else {
            false
        }
    });
}

/// This instance's registry of live connections (see the module documentation).
pub struct Hub {
    settings: HubSettings,
    revocations: Arc<Revocations>,
    permissions: Arc<Permissions>,
    tenants: Arc<TenantResolver>,
    observer: Arc<dyn Observer>,
    registry: Mutex<HashMap<TenantId, HashMap<u64, Entry>>>,
    next_id: AtomicU64,
    going_away: AtomicBool,
    /// Whether the subscriber is known to be live.
    live: watch::Sender<bool>,
    /// Bumped when every connection should re-check now (the subscriber (re)connected).
    recheck_all: watch::Sender<u64>,
    /// How many connections are registered.
    open: watch::Sender<usize>,
    /// How many connections were cut off as slow consumers.
    cut_off: watch::Sender<u64>,
}

impl Hub {
    /// An empty hub.
    pub fn new(
        settings: HubSettings,
        revocations: Arc<Revocations>,
        permissions: Arc<Permissions>,
        tenants: Arc<TenantResolver>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            settings,
            revocations,
            permissions,
            tenants,
            observer,
            registry: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            going_away: AtomicBool::new(false),
            live: watch::channel(false).0,
            recheck_all: watch::channel(0).0,
            open: watch::channel(0).0,
            cut_off: watch::channel(0).0,
        }
    }

    /// The hub's bounds.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, HashMap<u64, Entry>>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection, within the per-user and per-tenant limits.
    pub fn register(self: &Arc<Self>, who: Registration) -> Result<Connection, Refusal> {
        if self.going_away.load(Ordering::SeqCst) {
            return Err(Refusal::GoingAway);
        }
        let (sender, receiver) = mpsc::channel(self.settings.queue.max(1));
        let close = Arc::new(watch::channel(None).0);
        let events = Arc::new(EventSet::default());
        events.add(&who.events);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut registry = self.entries();
            let connections = registry.entry(who.tenant).or_default();
            if let Some(allowed) = who.tenant_limit
                && connections.len() as u64 >= allowed
            {
                return Err(Refusal::PerTenant { allowed });
            }
            let of_user = connections.values().filter(|e| e.user == who.user).count();
            if of_user >= self.settings.max_per_user {
                return Err(Refusal::PerUser {
                    allowed: self.settings.max_per_user,
                });
            }
            connections.insert(
                id,
                Entry {
                    user: who.user,
                    credential: who.credential.id(),
                    events: events.clone(),
                    queue: sender,
                    close: close.clone(),
                },
            );
            self.open.send_modify(|n| *n += 1);
        }
        self.observer.connection_opened();
        let closed = close.subscribe();
        Ok(Connection {
            hub: self.clone(),
            id,
            tenant: who.tenant,
            user: who.user,
            credential: who.credential,
            key_permissions: who.key_permissions,
            events,
            queue: receiver,
            close,
            closed,
            pending: VecDeque::new(),
            last_check: Instant::now(),
            checking: None,
            live: self.live.subscribe(),
            recheck_all: self.recheck_all.subscribe(),
        })
    }

    fn unregister(&self, tenant: TenantId, id: u64) {
        let mut registry = self.entries();
        if let Some(connections) = registry.get_mut(&tenant)
            && connections.remove(&id).is_some()
        {
            self.open.send_modify(|n| *n = n.saturating_sub(1));
            if connections.is_empty() {
                registry.remove(&tenant);
            }
        }
    }

    /// How many connections are open on this instance.
    pub fn open_connections(&self) -> usize {
        *self.open.borrow()
    }

    /// How many connections `user` of `tenant` has open on this instance.
    pub fn connections_of(&self, tenant: TenantId, user: Uuid) -> usize {
        self.entries()
            .get(&tenant)
            .map_or(0, |c| c.values().filter(|e| e.user == user).count())
    }

    /// Counts the connections cut off as slow consumers so far.
    pub fn cut_offs(&self) -> watch::Receiver<u64> {
        self.cut_off.subscribe()
    }

    /// Completes once this instance's subscriber is live.
    pub async fn listening(&self) {
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|on| *on).await;
    }

    /// Shutting down: refuses new connections and closes every open one with 1001 once its
    /// queued events are delivered.
    pub fn go_away(&self) {
        self.going_away.store(true, Ordering::SeqCst);
        self.close_where(|_, _| true, Close::GoingAway);
    }

    /// Completes when no connection is left (or after `grace`).
    pub async fn drained(&self, grace: Duration) {
        let mut open = self.open.subscribe();
        let _ = tokio::time::timeout(grace, open.wait_for(|n| *n == 0)).await;
    }

    fn close_where(&self, matches: impl Fn(&TenantId, &Entry) -> bool, why: Close) -> usize {
        let registry = self.entries();
        let mut closed = 0;
        for (tenant, connections) in registry.iter() {
            for entry in connections.values().filter(|e| matches(tenant, e)) {
                signal(&entry.close, why);
                closed += 1;
            }
        }
        closed
    }

    /// Applies a revocation announcement of `tenant`: closes the blocked user's connections
    /// and those made with a revoked credential.
    pub fn revoked(&self, tenant: TenantId, announcement: &Announcement) -> usize {
        self.close_where(
            |t, e| {
                *t == tenant
                    && (announcement.user == Some(e.user)
                        || announcement.credentials.contains(&e.credential))
            },
            Close::Revoked,
        )
    }

    /// Closes every connection of `tenant` unless it is (still) active.
    pub async fn tenant_changed(&self, tenant: TenantId) {
        // The resolver's own listener drops its cache on the same message; do not race it.
        self.tenants.invalidate_all();
        let unavailable = match self.tenants.lookup(TenantKey::Id(tenant)).await {
            Ok(found) => found.status != TenantStatus::Active,
            Err(AdmissionError::TenantNotFound) => true,
            // The database cannot say: connections' periodic re-checks will.
            Err(_) => false,
        };
        if unavailable {
            self.close_where(|t, _| *t == tenant, Close::TenantUnavailable);
        }
    }

    /// Offers an event of `tenant` (the channel's tenant) to each of its subscribed
    /// connections, without waiting: a full queue cuts its connection off.
    pub fn deliver(&self, tenant: TenantId, mut envelope: crate::Envelope) {
        envelope.tenant_id = tenant.0;
        let latency = (chrono::Utc::now() - envelope.published_at)
            .to_std()
            .unwrap_or_default();
        let kind = envelope.event;
        let delivery = Arc::new(Delivery {
            kind,
            text: ServerFrame::Event(envelope).to_text().into(),
        });
        let registry = self.entries();
        let Some(connections) = registry.get(&tenant) else {
            return;
        };
        for entry in connections.values() {
            if !entry.events.contains(kind) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = entry.queue.try_send(delivery.clone())
                && entry.close.borrow().is_none()
            {
                signal(&entry.close, Close::SlowConsumer);
                self.cut_off.send_modify(|n| *n += 1);
            }
        }
        drop(registry);
        self.observer.fanned_out(latency);
    }

    /// Handles one pub/sub message (its channel and payload).
    async fn handle(self: &Arc<Self>, channel: &str, payload: &str) {
        if channel == TENANT_CHANGES_CHANNEL {
            if let Ok(tenant) = Uuid::try_parse(payload) {
                let this = self.clone();
                tokio::spawn(async move { this.tenant_changed(TenantId(tenant)).await });
            }
        } else if let Some(tenant) = tenant_of_events_channel(channel) {
            if payload.len() > MAX_PAYLOAD {
                tracing::warn!(%tenant, "oversized live event dropped");
                return;
            }
            match serde_json::from_str::<crate::Envelope>(payload) {
                Ok(envelope) => self.deliver(tenant, envelope),
                Err(error) => tracing::warn!(%tenant, %error, "malformed live event dropped"),
            }
        } else if let Some(raw) = channel.strip_prefix(ANNOUNCEMENTS_PREFIX) {
            let tenant = (raw.len() == 36)
                .then(|| Uuid::try_parse(raw).ok())
                .flatten();
            match (tenant, Announcement::parse(payload)) {
                (Some(tenant), Some(announcement)) => {
                    self.revoked(TenantId(tenant), &announcement);
                }
                _ => tracing::warn!("malformed revocation announcement dropped"),
            }
        }
    }
}

/// What a connection should send next.
#[derive(Debug)]
pub enum Outgoing {
    /// Event frames (JSON text), in order.
    Frames(Vec<Arc<str>>),
    /// Close with this code: nothing more is sent.
    Close(Close),
}

/// One live connection, registered in the [`Hub`] until dropped.
pub struct Connection {
    hub: Arc<Hub>,
    id: u64,
    tenant: TenantId,
    user: Uuid,
    credential: Credential,
    key_permissions: Option<PermissionSet>,
    events: Arc<EventSet>,
    queue: mpsc::Receiver<Arc<Delivery>>,
    close: Arc<watch::Sender<Option<Close>>>,
    closed: watch::Receiver<Option<Close>>,
    /// Taken from the queue, not yet handed out (kept here so that [`Self::next`] is
    /// cancel-safe).
    pending: VecDeque<Arc<Delivery>>,
    last_check: Instant,
    /// A re-check under way: a task of its own, so that [`Self::next`] being cancelled (a
    /// frame arrived) does not restart it, and a chatty client cannot keep it from ending.
    checking: Option<tokio::task::JoinHandle<Result<(), Close>>>,
    live: watch::Receiver<bool>,
    recheck_all: watch::Receiver<u64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.hub.unregister(self.tenant, self.id);
        let reason = self.close.borrow().map_or("client_closed", Close::reason);
        self.hub.observer.connection_closed(reason);
    }
}

impl Connection {
    /// The kinds subscribed to (the edge changes them on `subscribe`/`unsubscribe`).
    pub fn events(&self) -> &EventSet {
        &self.events
    }

    /// The tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The user.
    pub fn user(&self) -> Uuid {
        self.user
    }

    /// Closes the connection for `why` (the edge's own reasons: idle, limits).
    pub fn close(&self, why: Close) {
        signal(&self.close, why);
    }

    /// Watches the reason the connection is closing (`None` until it is).
    pub fn watch_close(&self) -> watch::Receiver<Option<Close>> {
        self.close.subscribe()
    }

    /// The reason the connection is closing, once it is.
    pub fn closing(&self) -> Option<Close> {
        *self.closed.borrow()
    }

    /// Waits for what to send next: event frames the principal may see (checked now against
    /// the permission cache), or the close. Re-checks the credential and the tenant when due.
    /// Cancel-safe: events taken from the queue wait in the connection for the next call.
    pub async fn next(&mut self) -> Outgoing {
        loop {
            let closing = *self.closed.borrow();
            if let Some(why) = closing {
                if !why.flushes() {
                    return Outgoing::Close(why);
                }
                // What is queued goes out, nothing more comes in.
                self.queue.close();
                while self.pending.len() < MAX_BATCH {
                    match self.queue.try_recv() {
                        Ok(delivery) => self.pending.push_back(delivery),
                        Err(_) => break,
                    }
                }
                if self.pending.is_empty() {
                    return Outgoing::Close(why);
                }
            } else if self.pending.is_empty() {
                let period = if *self.live.borrow() {
                    self.hub.settings.recheck
                } else {
                    UNLIVE_RECHECK
                };
                tokio::select! {
                    biased;
                    _ = self.closed.changed() => continue,
                    _ = self.recheck_all.changed() => self.last_check = Instant::now() - period,
                    _ = self.live.changed() => continue,
                    delivery = self.queue.recv() => match delivery {
                        Some(delivery) => {
                            self.pending.push_back(delivery);
                            while self.pending.len() < MAX_BATCH {
                                match self.queue.try_recv() {
                                    Ok(delivery) => self.pending.push_back(delivery),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => return Outgoing::Close(Close::GoingAway),
                    },
                    () = tokio::time::sleep_until(self.last_check + period) => {}
                }
                if self.checking.is_some() || self.last_check.elapsed() >= period {
                    let hub = self.hub.clone();
                    let (tenant, user, credential) = (self.tenant, self.user, self.credential);
                    let task = self.checking.get_or_insert_with(|| {
                        tokio::spawn(recheck(hub, tenant, user, credential))
                    });
                    let outcome = task.await;
                    self.checking = None;
                    match outcome {
                        Ok(Ok(())) => self.last_check = Instant::now(),
                        Ok(Err(why)) => {
                            self.close(why);
                            continue;
                        }
                        Err(_) => {
                            self.close(Close::TryAgainLater);
                            continue;
                        }
                    }
                }
            }
            if self.pending.is_empty() {
                continue;
            }
            let granted = match self.granted().await {
                Ok(granted) => granted,
                // Closing already (a shutdown flushing its queue): what cannot be checked
                // is not sent, and the close goes out.
                Err(_) if closing.is_some() => {
                    self.pending.clear();
                    return Outgoing::Close(closing.unwrap_or(Close::GoingAway));
                }
                Err(why) => {
                    self.close(why);
                    continue;
                }
            };
            let frames: Vec<Arc<str>> = self
                .pending
                .drain(..)
                .filter(|d| self.events.contains(d.kind) && granted.contains(d.kind.permission()))
                .map(|d| d.text.clone())
                .collect();
            if !frames.is_empty() {
                return Outgoing::Frames(frames);
            }
        }
    }

    /// What the principal may receive now: the user's permissions (from the permission
    /// cache), bounded by the API key's.
    async fn granted(&self) -> Result<PermissionSet, Close> {
        let held = self
            .hub
            .permissions
            .of(self.tenant, self.user)
            .await
            .map_err(|_| Close::TryAgainLater)?;
        Ok(match self.key_permissions {
            Some(key) => held.intersection(key).difference(NOT_FOR_API_KEYS),
            None => held,
        })
    }

    /// Whether the credential may still be used and the tenant is still active.
    pub async fn recheck(&self) -> Result<(), Close> {
        recheck(self.hub.clone(), self.tenant, self.user, self.credential).await
    }
}

/// Whether `credential` of `user` may still be used and `tenant` is still active.
async fn recheck(
    hub: Arc<Hub>,
    tenant: TenantId,
    user: Uuid,
    credential: Credential,
) -> Result<(), Close> {
    match hub.revocations.check(tenant, user, credential).await {
        Ok(()) => {}
        Err(AdmissionError::Revoked) => return Err(Close::Revoked),
        Err(_) => return Err(Close::TryAgainLater),
    }
    match hub.tenants.lookup(TenantKey::Id(tenant)).await {
        Ok(found) if found.status == TenantStatus::Active => Ok(()),
        Ok(_) | Err(AdmissionError::TenantNotFound) => Err(Close::TenantUnavailable),
        // The control plane cannot say; the credential was checked.
        Err(_) => Ok(()),
    }
}

/// Runs this instance's subscriber (see the module documentation) on the Redis at
/// `redis_url` until `stop` completes, reconnecting after failures.
pub async fn listen(redis_url: SecretString, hub: Arc<Hub>, stop: impl Future<Output = ()>) {
    tokio::select! {
        () = stop => {}
        () = subscribe(&redis_url, &hub) => {}
    }
    hub.live.send_replace(false);
}

async fn subscribe(redis_url: &SecretString, hub: &Arc<Hub>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = async {
            let client = redis::Client::open(redis_url.expose_secret())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(format!("{CHANNEL_PREFIX}*")).await?;
            pubsub.subscribe(TENANT_CHANGES_CHANNEL).await?;
            hub.live.send_replace(true);
            // Announcements may have been missed while away: everyone re-checks now.
            hub.recheck_all.send_modify(|n| *n += 1);
            tracing::debug!("realtime hub subscribed");
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                hub.handle(message.get_channel_name(), &payload).await;
            }
            redis::RedisResult::Ok(())
        }
        .await;
        hub.live.send_replace(false);
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(error) => tracing::warn!(%error, "realtime hub lost Redis; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
