//! Typed jobs: the payload type carries its kind (the crates.io `BackgroundJob` model).
//!
//! A job is a serde struct that implements [`Job`]; its kind is declared with
//! [`declare_job!`](crate::declare_job), which is the only way to give a type a kind, and
//! which also records the kind in a process-wide list ([`declared_kinds`]). A [`Registry`]
//! runs a kind only once its type was registered with the dependencies its handler needs, so
//! [`Registry::unregistered`] names every kind that some code could enqueue and no worker
//! would run: start-up refuses to start a worker with such gaps, and a test asserts there
//! are none.

use std::{collections::HashMap, future::Future, marker::PhantomData, sync::Arc};

use anyhow::Context as _;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tenancy::BoxFuture;

use crate::{JobContext, JobError, NewJob};

/// A kind, as [`declare_job!`](crate::declare_job) records it.
#[doc(hidden)]
#[derive(Debug)]
pub struct DeclaredKind(pub &'static str);

inventory::collect!(DeclaredKind);

/// A type's kind. Implemented by [`declare_job!`](crate::declare_job), which also records
/// the kind in [`declared_kinds`]; implement it by hand only for a kind that no production
/// registry runs (a test's own jobs).
pub trait JobKind {
    /// Stored in `public.jobs.kind`; stable across releases (queued jobs outlive a deploy).
    const KIND: &'static str;
}

/// Gives a payload type its kind and records the kind for [`declared_kinds`].
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Thumbnails {
///     file_id: u64,
/// }
///
/// jobs::declare_job!(Thumbnails = "files.thumbnails");
///
/// assert_eq!(<Thumbnails as jobs::JobKind>::KIND, "files.thumbnails");
/// assert!(jobs::declared_kinds().contains(&"files.thumbnails"));
/// ```
#[macro_export]
macro_rules! declare_job {
    ($ty:ty = $kind:literal) => {
        impl $crate::JobKind for $ty {
            const KIND: &'static str = $kind;
        }
        $crate::inventory::submit! { $crate::DeclaredKind($kind) }
    };
}

/// Every kind declared in the binary, sorted.
pub fn declared_kinds() -> Vec<&'static str> {
    let mut kinds: Vec<_> = inventory::iter::<DeclaredKind>().map(|k| k.0).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

/// A job: its payload, which it is deserialized into before it runs. Handlers must be
/// idempotent: a job can run more than once.
pub trait Job: JobKind + Serialize + DeserializeOwned + Send + 'static {
    /// Attempts before the job is dead.
    const MAX_ATTEMPTS: i32 = 5;

    /// What the handler needs besides the job (a mailer, the object store…), given once
    /// when the kind is registered.
    type Deps: Send + Sync + 'static;

    /// Does the work. An error fails this attempt (and is kept as `last_error`).
    fn run(
        self,
        ctx: &mut JobContext,
        deps: &Self::Deps,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// This job, ready to enqueue (add a tenant, a unique key or a due time to it).
    fn to_job(&self) -> Result<NewJob, JobError> {
        let payload = serde_json::to_value(self).map_err(JobError::Payload)?;
        Ok(NewJob::new(Self::KIND, payload).max_attempts(Self::MAX_ATTEMPTS))
    }
}

/// A registered kind, its payload type erased.
pub(crate) trait Handler: Send + Sync {
    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

struct Typed<J: Job> {
    deps: J::Deps,
    job: PhantomData<fn() -> J>,
}

impl<J: Job> Handler for Typed<J> {
    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let job: J = serde_json::from_value(payload)
                .with_context(|| format!("the payload is not a `{}` job", J::KIND))?;
            job.run(ctx, &self.deps).await
        })
    }
}

/// The kinds a worker runs, each with its handler's dependencies.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `J` jobs with `deps` (replacing an earlier registration of the kind).
    pub fn register<J: Job>(mut self, deps: J::Deps) -> Self {
        let handler = Typed::<J> {
            deps,
            job: PhantomData,
        };
        self.handlers.insert(J::KIND, Arc::new(handler));
        self
    }

    /// Whether `kind` has a handler.
    pub fn handles(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    /// The declared kinds (see [`declared_kinds`]) this registry has no handler for.
    pub fn unregistered(&self) -> Vec<&'static str> {
        declared_kinds()
            .into_iter()
            .filter(|kind| !self.handles(kind))
            .collect()
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Registered {}

    #[derive(Serialize, Deserialize)]
    struct Forgotten {
        n: u32,
    }

    crate::declare_job!(Registered = "test.registered");
    crate::declare_job!(Forgotten = "test.forgotten");

    impl Job for Registered {
        type Deps = ();

        async fn run(self, _: &mut JobContext, _: &()) -> anyhow::Result<()> {
            Ok(())
        }
    }

    impl Job for Forgotten {
        const MAX_ATTEMPTS: i32 = 3;
        type Deps = ();

        async fn run(self, _: &mut JobContext, _: &()) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_declared_kind_without_a_handler_is_named() {
        // This crate declares kinds of its own too (`tenancy.replenish_spares`, `jobs.prune`).
        let ours = |kinds: Vec<&'static str>| -> Vec<&'static str> {
            kinds
                .into_iter()
                .filter(|k| k.starts_with("test."))
                .collect()
        };
        assert_eq!(
            ours(declared_kinds()),
            ["test.forgotten", "test.registered"]
        );
        let registry = Registry::new().register::<Registered>(());
        assert!(registry.handles("test.registered"));
        assert_eq!(ours(registry.unregistered()), ["test.forgotten"]);
        let registry = registry.register::<Forgotten>(());
        assert!(ours(registry.unregistered()).is_empty());
        let registry = registry
            .register::<crate::spares::ReplenishSpares>(crate::spares::SparePool { target: 0 })
            .register::<crate::retention::PruneJobs>(crate::retention::Retention {
                retain: std::time::Duration::from_secs(3600),
                batch: 1,
                observer: Arc::new(()),
            });
        assert!(registry.unregistered().is_empty());
    }

    #[test]
    fn a_typed_job_carries_its_kind_payload_and_attempts() {
        let job = Forgotten { n: 7 }.to_job().expect("serializes");
        assert_eq!(job.kind, "test.forgotten");
        assert_eq!(job.payload, serde_json::json!({ "n": 7 }));
        assert_eq!(job.max_attempts, 3);
    }
}
