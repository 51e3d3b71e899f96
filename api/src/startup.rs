//! Building and running the server: one [`Application::build`] that binds its own listener
//! (port 0 in tests), exposes [`Application::port`], and runs until shut down.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use bb8_redis::RedisConnectionManager;
use identity::{AccessTokens, HashCost, PasswordHasher, link_emails};
use poem::{
    Endpoint, EndpointExt, Response, Route, Server, endpoint::make_sync, get,
    listener::TcpAcceptor, middleware::Cors, web::Html,
};
use secrecy::ExposeSecret;
use tenancy::{ControlDb, PoolSettings};

use crate::{
    AppState,
    auth::{permissions::Permissions, revocation::Revocations},
    metrics::Metrics,
    middleware::{Allow, AllowedMethods, BodyLimit, Observe, SecurityHeaders, Timeout},
    rate_limit::{RateLimit, RateLimiter},
    routes,
    settings::Settings,
    tenant::{self, TenantResolver},
};

/// A bound, ready-to-run server.
pub struct Application {
    acceptor: TcpAcceptor,
    port: u16,
    metrics: Option<MetricsListener>,
    state: AppState,
    extra_routes: Option<Route>,
}

/// The bound `/metrics` listener of a process (see [`serve_metrics`]).
pub struct MetricsListener {
    acceptor: TcpAcceptor,
    port: u16,
}

impl MetricsListener {
    /// Binds `CANOPY_METRICS_BIND`, unless it is `off`.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(addr) = settings.http.metrics_bind else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind the metrics listener {addr}"))?;
        let port = listener
            .local_addr()
            .context("metrics listener has no address")?
            .port();
        let acceptor =
            TcpAcceptor::from_tokio(listener).context("failed to set up the metrics listener")?;
        Ok(Some(Self { acceptor, port }))
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Serves `GET /metrics` of `state` on `listener` until `shutdown` completes. The figures
/// (routes, pools, jobs) are for operators only, so they stay off the public port.
pub async fn serve_metrics(
    state: AppState,
    listener: MetricsListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Route::new()
        .at("/metrics", get(routes::ops::metrics))
        .data(state);
    Server::new_with_acceptor(listener.acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(std::time::Duration::from_secs(5)))
        .await
        .context("metrics listener failed")
}

impl Application {
    /// Connects the pools, checks the database is migrated, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let state = build_state(settings)?;
        state
            .db
            .ensure_migrated()
            .await
            .context("cannot start the server")?;
        state
            .tokens
            .initialize()
            .await
            .context("cannot load the access-token signing keys")?;
        state
            .db
            .ensure_tenants_current()
            .await
            .context("cannot start the server")?;
        let listener = tokio::net::TcpListener::bind(state.settings.http.bind)
            .await
            .with_context(|| format!("failed to bind {}", state.settings.http.bind))?;
        let port = listener
            .local_addr()
            .context("listener has no address")?
            .port();
        let acceptor =
            TcpAcceptor::from_tokio(listener).context("failed to set up the listener")?;
        let metrics = MetricsListener::bind(&state.settings).await?;
        Ok(Self {
            acceptor,
            port,
            metrics,
            state,
            extra_routes: None,
        })
    }

    /// Mounts more routes inside the same pipeline (tests use this to exercise the
    /// pipeline with endpoints of their own).
    pub fn with_extra_routes(mut self, routes: Route) -> Self {
        self.extra_routes = Some(routes);
        self
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the `/metrics` listener (`None` when `CANOPY_METRICS_BIND=off`).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(MetricsListener::port)
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or SIGINT, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then stops accepting connections and waits up to
    /// the configured shutdown timeout for in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let grace = self.state.settings.http.shutdown_timeout;
        let db = self.state.db.clone();
        let mut background = Background::new();
        background.spawn(tenant::listen_for_changes(
            self.state.clone(),
            background.stopped(),
        ));
        background.spawn(realtime::hub::listen(
            self.state.settings.redis.url.clone(),
            self.state.realtime.clone(),
            background.stopped(),
        ));
        background.spawn(purge_deleted_tenants(
            self.state.clone(),
            background.stopped(),
        ));
        background.spawn(reload_signing_keys(
            self.state.clone(),
            background.stopped(),
        ));
        background.spawn(files::jobs::schedule_sweeps(
            self.state.db.clone(),
            self.state.settings.files.orphan_sweep_interval,
            background.stopped(),
        ));
        background.spawn(billing::reconcile::schedule_reconciliation(
            self.state.db.clone(),
            self.state.settings.billing.reconcile_interval,
            background.stopped(),
        ));
        if self.state.settings.tenancy.spares > 0 {
            background.spawn(jobs::spares::schedule_replenishment(
                self.state.db.clone(),
                jobs::spares::REPLENISH_INTERVAL,
                background.stopped(),
            ));
        }
        for job in retention_jobs()? {
            background.spawn(jobs::enqueue_every(
                self.state.db.clone(),
                self.state.settings.retention.prune_interval,
                job,
                background.stopped(),
            ));
        }
        // One shutdown signal for the HTTP server and the in-process workers, carrying when
        // it came: the server and the background loops share one deadline from then.
        let (stop, stopped) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
        let workers = if self.state.settings.jobs.workers > 0 {
            let worker = worker(&self.state, job_registry(&self.state)?);
            let mut stopped = stopped.clone();
            Some(tokio::spawn(worker.run(async move {
                let _ = stopped.wait_for(Option::is_some).await;
            })))
        } else {
            None
        };
        let metrics = self.metrics.map(|listener| {
            let mut stopped = stopped.clone();
            tokio::spawn(serve_metrics(self.state.clone(), listener, async move {
                let _ = stopped.wait_for(Option::is_some).await;
            }))
        });
        let hub = self.state.realtime.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(Some(tokio::time::Instant::now()));
            // Realtime connections are not requests the server waits for: they close with
            // 1001 once their queued events are out.
            hub.go_away();
        };
        let hub = self.state.realtime.clone();
        let app = router(self.state, self.extra_routes);
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(grace))
            .await;
        // After the server: requests still finishing may need the tenant-change listener.
        let since = stopped.borrow().unwrap_or_else(tokio::time::Instant::now);
        let left = (since + grace).saturating_duration_since(tokio::time::Instant::now());
        hub.drained(left).await;
        background.stop_by(since + grace).await;
        if let Some(workers) = workers {
            // The signal reached the workers together with the server; wait for their jobs.
            drop(stopped);
            match workers.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(error = %tenancy::error_chain(&error), "worker failed")
                }
                Err(error) => tracing::error!(%error, "worker panicked"),
            }
        }
        if let Some(metrics) = metrics {
            await_metrics(metrics).await;
        }
        served.context("server failed")?;
        db.close().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// A `canopy worker` process: job workers and the `/metrics` listener, no public HTTP.
pub struct WorkerProcess {
    state: AppState,
    metrics: Option<MetricsListener>,
}

impl WorkerProcess {
    /// Connects, checks the database is migrated, and binds the metrics listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let state = build_state(settings)?;
        state
            .db
            .ensure_migrated()
            .await
            .context("cannot start the worker")?;
        state
            .db
            .ensure_tenants_current()
            .await
            .context("cannot start the worker")?;
        let metrics = MetricsListener::bind(&state.settings).await?;
        Ok(Self { state, metrics })
    }

    /// The port of the `/metrics` listener (`None` when `CANOPY_METRICS_BIND=off`).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(MetricsListener::port)
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs the workers until `shutdown` completes and their jobs are done or put back,
    /// serving `/metrics` meanwhile.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let metrics = self.metrics.map(|listener| {
            let mut stopped = stopped.clone();
            tokio::spawn(serve_metrics(self.state.clone(), listener, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        });
        let worker = worker(&self.state, job_registry(&self.state)?);
        let outcome = worker
            .run(async move {
                shutdown.await;
                let _ = stop.send(true);
            })
            .await;
        drop(stopped);
        if let Some(metrics) = metrics {
            // Signalled with the workers; it finishes the scrape it is answering.
            await_metrics(metrics).await;
        }
        self.state.db.close().await;
        Ok(outcome?)
    }
}

/// The key signing and checking one-click unsubscribe links (`CANOPY_UNSUBSCRIBE_KEY`).
pub fn unsubscribe_key(settings: &Settings) -> email::unsubscribe::UnsubscribeKey {
    email::unsubscribe::UnsubscribeKey::new(
        settings.email.unsubscribe_key.expose_secret().as_bytes(),
    )
}

/// The job handlers this binary runs, with their transports from the state's settings.
pub fn job_registry(state: &AppState) -> anyhow::Result<jobs::Registry> {
    let settings = &state.settings;
    let storage = object_store(settings);
    let from = &settings.email.from;
    let mailer = match &settings.email.smtp_url {
        Some(url) => email::Mailer::smtp(url.expose_secret(), from)?,
        None => email::Mailer::outbox(settings.email.outbox_dir.clone(), from)?,
    }
    .with_unsubscribe(email::unsubscribe::UnsubscribeLinks::new(
        unsubscribe_key(settings),
        settings.email.unsubscribe_url.clone(),
    ));
    let links = link_emails::LinkMailer::new(
        settings.auth.public_url.clone(),
        settings.auth.verification_ttl,
        settings.auth.password_reset_ttl,
        mailer.clone(),
    );
    let invitations = identity::invitations::InvitationEmails::new(
        mailer.clone(),
        settings.auth.public_url.clone(),
    );
    let email_changes = identity::lifecycle::EmailChangeMailer::new(
        mailer.clone(),
        settings.auth.public_url.clone(),
    );
    let registry = jobs::Registry::new()
        .register::<email::SendEmail>(mailer)
        .register::<identity::invitations::InvitationEmail>(invitations)
        .register::<identity::lifecycle::EmailChangeConfirmation>(email_changes)
        .register::<link_emails::PasswordResetRequested>(links.clone())
        .register::<link_emails::VerificationRequested>(links.clone())
        .register::<link_emails::LinkEmail>(links)
        .register::<files::jobs::Thumbnails>(files::jobs::ThumbnailMaker::new(
            storage.clone(),
            settings.files.thumbnail_sizes.clone(),
            // One budget for every decode of this process's workers.
            storage::images::DecodeBudget::new(settings.files.decode_memory),
        ))
        .register::<files::jobs::DeleteObjects>(storage.clone())
        .register::<files::jobs::SweepOrphans>(())
        .register::<files::jobs::SweepTenant>(files::jobs::Sweeper::new(
            storage.clone(),
            settings.files.orphan_grace,
        ))
        .register::<files::jobs::PurgeTenantObjects>(storage)
        .register::<billing::processing::ProcessEvent>(billing::processing::EventProcessor::new(
            state.db.clone(),
            settings.plans.clone(),
            settings.billing.secret_key.expose_secret(),
            Arc::new(state.clone()),
        ))
        .register::<billing::reconcile::Reconcile>(billing::reconcile::Reconciler::new(
            state.db.clone(),
            state.stripe.clone(),
        ))
        .register::<jobs::spares::ReplenishSpares>(jobs::spares::SparePool {
            target: settings.tenancy.spares,
        });
    let registry = register_retention(registry, state);
    // A kind that code can enqueue and no worker runs would fail only when it is enqueued.
    let unregistered = registry.unregistered();
    anyhow::ensure!(
        unregistered.is_empty(),
        "no handler is registered for the job kinds {unregistered:?}"
    );
    Ok(registry)
}

/// The periodic prune jobs (`CANOPY_PRUNE_INTERVAL`), each with its unique key.
pub fn retention_jobs() -> anyhow::Result<Vec<jobs::NewJob>> {
    Ok(vec![
        jobs::retention::PruneJobs {}.new_job()?,
        billing::retention::PruneWebhookEvents {}.new_job()?,
        email::messages::PruneEmailMessages {}.new_job()?,
        identity::retention::PruneTenants {}.new_job()?,
    ])
}

/// Registers the prune jobs with their retention settings; what they delete is counted in
/// `canopy_pruned_total{what}`.
fn register_retention(registry: jobs::Registry, state: &AppState) -> jobs::Registry {
    let retention = &state.settings.retention;
    let observer: Arc<dyn jobs::retention::PruneObserver> = state.metrics.clone();
    let control = |retain| jobs::retention::Retention {
        retain,
        batch: retention.prune_batch,
        observer: observer.clone(),
    };
    let (plans, audit_default) = (state.settings.plans.clone(), retention.audit_events);
    registry
        .register::<jobs::retention::PruneJobs>(control(retention.succeeded_jobs))
        .register::<billing::retention::PruneWebhookEvents>(control(retention.webhook_events))
        .register::<email::messages::PruneEmailMessages>(control(retention.email_messages))
        .register::<identity::retention::PruneTenants>(())
        .register::<identity::retention::PruneTenant>(identity::retention::TenantRetention {
            // Never before an access token of the session could stop verifying: the
            // revocation list is rebuilt from the sessions table.
            sessions: retention.sessions.max(state.settings.jwt.access_ttl),
            email_tokens: retention.email_tokens,
            invitations: retention.invitations,
            // The tenant's plan may keep its audit trail longer (or shorter).
            audit_events: Arc::new(move |tenant| {
                plans
                    .limits(&tenant.plan)
                    .audit_retention
                    .unwrap_or(audit_default)
            }),
            batch: retention.prune_batch,
            observer: observer.clone(),
        })
}

/// The object store of `settings` (no request is made until the first use).
pub fn object_store(settings: &Settings) -> storage::ObjectStore {
    storage::ObjectStore::new(&storage::StorageSettings {
        endpoint: settings.s3.endpoint.to_string(),
        region: settings.s3.region.clone(),
        bucket: settings.s3.bucket.clone(),
        access_key_id: settings.s3.access_key_id.clone(),
        secret_access_key: settings.s3.secret_access_key.expose_secret().to_owned(),
    })
}

/// A worker for `registry` configured from the settings; its outcomes feed `/metrics`.
pub fn worker(state: &AppState, registry: jobs::Registry) -> jobs::Worker {
    let settings = &state.settings;
    let worker = jobs::Worker::new(
        state.db.clone(),
        registry,
        jobs::WorkerConfig {
            concurrency: settings.jobs.workers.max(1),
            lease: settings.jobs.lease,
            poll_interval: settings.jobs.poll_interval,
            shutdown_deadline: settings.http.shutdown_timeout,
            backoff_base: settings.jobs.backoff_base,
            backoff_max: std::time::Duration::from_secs(3600),
        },
    );
    let mut outcomes = worker.outcomes();
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        loop {
            match outcomes.recv().await {
                Ok(outcome) => metrics.observe_job(&outcome.kind, outcome.status),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    worker
}

/// Builds the shared state without touching the network: pools connect on first use.
pub fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    let db = ControlDb::connect_lazy(&PoolSettings {
        connect: settings.database.connect.clone(),
        max_connections: settings.database.max_connections,
        acquire_timeout: settings.database.acquire_timeout,
        max_lifetime: settings.database.max_lifetime,
    })
    .with_purge_hook(Arc::new(files::jobs::PurgeObjects));
    // With a pool of spares, every provisioning asks for it to be refilled.
    let db = match settings.tenancy.spares {
        0 => db,
        _ => db.with_provision_hook(Arc::new(jobs::spares::RefillAfterProvisioning)),
    };
    let manager = RedisConnectionManager::new(settings.redis.url.expose_secret())
        .context("invalid Redis URL")?;
    let redis = bb8::Pool::builder()
        .max_size(settings.redis.pool_size)
        .connection_timeout(settings.http.health_timeout)
        .build_unchecked(manager);
    let tenants = Arc::new(TenantResolver::new(
        db.clone(),
        settings.http.base_domain.clone(),
        settings.tenancy.cache_ttl,
    ));
    let tokens = AccessTokens::new(
        db.pool().clone(),
        &settings.jwt.issuer,
        &settings.jwt.audience,
        settings.jwt.access_ttl,
    );
    let threads = match settings.auth.password_hash_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let hasher = PasswordHasher::new(threads, settings.auth.password_hash_queue, HashCost::OWASP)
        .context("cannot start the password hashing pool")?;
    let revocations = Arc::new(Revocations::new(
        redis.clone(),
        db.tenant_db(),
        settings.jwt.refresh_ttl,
        settings.jwt.access_ttl,
    ));
    let storage = object_store(&settings);
    let permissions = Arc::new(Permissions::new(
        redis.clone(),
        db.tenant_db(),
        settings.auth.permission_cache_ttl,
    ));
    let stripe = billing::stripe_api::StripeApi::new(
        settings.billing.api_base.as_str(),
        settings.billing.secret_key.expose_secret(),
    )
    .context("cannot set up the Stripe client")?;
    let metrics = Arc::new(Metrics::new());
    let rate_limiter = Arc::new(RateLimiter::new(
        settings.rate_limit.clone(),
        redis.clone(),
        metrics.clone(),
    ));
    let db_tenant_db = db.tenant_db();
    let realtime = Arc::new(realtime::Hub::new(
        realtime::HubSettings {
            queue: settings.realtime.queue,
            max_per_user: settings.realtime.max_per_user,
            recheck: settings.realtime.recheck,
        },
        revocations.clone(),
        permissions.clone(),
        tenants.clone(),
        metrics.clone(),
    ));
    Ok(AppState {
        realtime,
        stripe,
        rate_limiter,
        recent_webhooks: moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(std::time::Duration::from_secs(600))
            .build(),
        settings: Arc::new(settings),
        tenant_db: db.tenant_db(),
        db,
        tenants,
        redis,
        metrics,
        tokens,
        hasher,
        revocations,
        permissions,
        api_keys: Arc::new(admission::api_keys::ApiKeys::new(db_tenant_db)),
        storage,
    })
}

/// The whole HTTP app: routes wrapped in the request pipeline (see [`crate::middleware`]).
pub fn router(state: AppState, extra_routes: Option<Route>) -> impl Endpoint + 'static {
    let http = &state.settings.http;
    let api = routes::openapi_service();
    // Swagger UI embeds the document; it gets the processed one (see `openapi_json`).
    let spec = routes::openapi_json();
    let docs = api.swagger_ui_html().replace(&api.spec(), &spec);
    let mut allowed = serde_json::from_str(&spec)
        .map(|doc| AllowedMethods::from_openapi(&doc))
        .unwrap_or_default();
    for path in ["/docs", "/openapi.json", "/problems/:code"] {
        allowed.add(path, &["GET"]);
    }
    let rate_limit = RateLimit::new(
        state.rate_limiter.clone(),
        http.trusted_proxies.clone(),
        &spec,
    );
    let mut route = Route::new()
        .nest("/", api)
        .nest(
            "/docs",
            Route::new().at("/", get(make_sync(move |_| Html(docs.clone())))),
        )
        .at(
            "/openapi.json",
            get(make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            })),
        )
        .at("/problems/:code", get(routes::ops::problem_type));
    if let Some(extra) = extra_routes {
        route = route.nest("/__test", extra);
    }
    let cors = (!http.cors_origins.is_empty()).then(|| {
        Cors::new()
            .allow_origins(http.cors_origins.iter().map(String::as_str))
            .expose_header("x-request-id")
            .expose_header("etag")
            .expose_header("ratelimit-limit")
            .expose_header("ratelimit-remaining")
            .expose_header("ratelimit-reset")
            .expose_header("retry-after")
            .max_age(600)
    });
    route
        .with(Allow(Arc::new(allowed)))
        .with(rate_limit)
        .with(BodyLimit::new(http.body_limit).except(routes::files::is_upload))
        .with(Timeout::new(http.request_timeout).except(routes::files::is_upload))
        .with_if(cors.is_some(), cors.unwrap_or_else(Cors::new))
        .with(Observe::new(state.metrics.clone()))
        // Outside `Observe`, so that error responses it renders get the headers too.
        .with(SecurityHeaders)
        .data(state)
}

/// Waits for the `/metrics` listener, once signalled, to finish.
async fn await_metrics(metrics: tokio::task::JoinHandle<anyhow::Result<()>>) {
    match metrics.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "metrics listener failed"),
        Err(error) => tracing::error!(%error, "metrics listener panicked"),
    }
}

/// The background loops of a server process. Each is handed a stop signal that it heeds
/// between runs (a purge or an enqueue that has started finishes); at shutdown they are
/// signalled together and awaited, and only those still running after the grace period
/// are cut off.
struct Background {
    tasks: tokio::task::JoinSet<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Background {
    fn new() -> Self {
        Self {
            tasks: tokio::task::JoinSet::new(),
            stop: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Completes once [`Self::stop`] is called.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Signals every loop and waits until `deadline` at most for them to return.
    async fn stop_by(mut self, deadline: tokio::time::Instant) {
        self.stop.send_replace(true);
        let joined = tokio::time::timeout_at(deadline, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Err(error) = joined {
                    tracing::error!(%error, "a background task panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!(
                left = self.tasks.len(),
                "background tasks did not stop within the shutdown timeout; cut off"
            );
            self.tasks.shutdown().await;
        }
    }
}

/// Drops the schemas and roles of deleted tenants once their grace period is over, every
/// minute from start-up until `stop`. Every instance runs this; `skip locked` keeps them
/// from purging the same tenant twice.
async fn purge_deleted_tenants(state: AppState, stop: impl Future<Output = ()>) {
    let period = std::time::Duration::from_secs(60);
    jobs::every(tokio::time::Instant::now(), period, stop, || async {
        if let Err(error) = state.db.purge_deleted_tenants(chrono::Utc::now()).await {
            tracing::warn!(error = %anyhow::Error::from(error), "purging deleted tenants failed");
        }
    })
    .await;
}

/// Picks up key rotations and retirements made elsewhere (by `canopy admin keys`), every
/// minute until `stop`.
async fn reload_signing_keys(state: AppState, stop: impl Future<Output = ()>) {
    let period = std::time::Duration::from_secs(60);
    jobs::every(tokio::time::Instant::now() + period, period, stop, || async {
        if let Err(error) = state.tokens.reload().await {
            tracing::warn!(error = %anyhow::Error::from(error), "reloading signing keys failed");
        }
    })
    .await;
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
