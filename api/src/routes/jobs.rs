//! The job queue as the platform operator sees it (`/v1/admin/jobs`).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use crate::{
    AppState,
    admin_auth::PlatformAdmin,
    error::{ApiError, ApiResult, ErrorCode},
    routes::{ApiTag, pagination::page},
};

/// Job operations.
pub struct JobsApi;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its `run_at`.
    Queued,
    /// Claimed by a worker.
    Running,
    /// Done.
    Succeeded,
    /// Its last run failed; it will run again at `run_at`.
    Failed,
    /// Failed on every allowed attempt; `last_error` says why. Retry it by hand.
    Dead,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => Self::Dead,
        }
    }
}

/// A job.
#[derive(Debug, Object)]
pub struct Job {
    /// Id (time-ordered).
    pub id: Uuid,
    /// What it does (e.g. `email.send`).
    pub kind: String,
    /// Its input.
    pub payload: serde_json::Value,
    /// The tenant it runs for; absent for platform jobs.
    pub tenant_id: Option<Uuid>,
    /// Higher runs first.
    pub priority: i16,
    /// State.
    pub status: JobStatus,
    /// Runs so far.
    pub attempts: i32,
    /// Runs allowed before it is dead.
    pub max_attempts: i32,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Error of the last failed run.
    pub last_error: Option<String>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Succeeded or died at.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<jobs::JobRecord> for Job {
    fn from(j: jobs::JobRecord) -> Self {
        Self {
            id: j.id,
            kind: j.kind,
            payload: j.payload,
            tenant_id: j.tenant_id,
            priority: j.priority,
            status: JobStatus::parse(&j.status),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            last_error: j.last_error,
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Object)]
pub struct JobPage {
    /// Jobs.
    pub items: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl From<jobs::JobError> for ApiError {
    fn from(err: jobs::JobError) -> Self {
        match err {
            jobs::JobError::NotFound => ApiError::new(ErrorCode::NotFound, "No job with that id."),
            jobs::JobError::NotRetryable(status) => ApiError::new(
                ErrorCode::Conflict,
                format!("A {status} job cannot be retried; only dead and failed ones can."),
            ),
            other => ApiError::internal(other),
        }
    }
}

#[OpenApi(tag = "ApiTag::Jobs")]
impl JobsApi {
    /// List jobs, newest first.
    #[oai(path = "/v1/admin/jobs", method = "get", operation_id = "list_jobs")]
    #[expect(
        clippy::too_many_arguments,
        reason = "poem-openapi takes each query parameter as an argument"
    )]
    async fn list_jobs(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        /// Only jobs in this state.
        status: Query<Option<JobStatus>>,
        /// Only jobs of this kind.
        kind: Query<Option<String>>,
        /// Only this tenant's jobs.
        tenant_id: Query<Option<Uuid>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
    ) -> ApiResult<Json<JobPage>> {
        let filter = jobs::JobFilter {
            status: status.0.map(|s| s.as_str().to_owned()),
            kind: kind.0,
            tenant: tenant_id.0,
            before: cursor.0,
            limit: limit.0 + 1,
        };
        let items = jobs::list_jobs(&state.db, &filter).await?;
        let (items, next_cursor) = page(items, limit.0, |j| j.id.to_string());
        Ok(Json(JobPage {
            items: items.into_iter().map(Job::from).collect(),
            next_cursor,
        }))
    }

    /// Put a dead or failed job back in the queue, due now, with fresh attempts.
    #[oai(
        path = "/v1/admin/jobs/:id/retry",
        method = "post",
        operation_id = "retry_job"
    )]
    async fn retry_job(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        id: Path<Uuid>,
    ) -> ApiResult<Json<Job>> {
        let job = jobs::retry_job(&state.db, id.0).await?;
        tracing::info!(job_id = %job.id, kind = %job.kind, "job retried by an operator");
        Ok(Json(job.into()))
    }
}

fn default_limit() -> i64 {
    50
}
