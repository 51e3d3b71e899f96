//! What operators see of the queue: listings, retries, depth for metrics.
//!
//! Payloads must never carry a usable secret (a job that emails a link names the user and
//! mints the link when it runs). As defence in depth, every record this module returns has
//! its payload passed through [`redact_payload`]: operators never see the value of a field
//! named like a secret, nor a string holding a `token=` parameter.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tenancy::ControlDb;
use uuid::Uuid;

use crate::JobError;

/// A job as the operator sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// Payload.
    pub payload: Value,
    /// Tenant, for tenant jobs.
    pub tenant_id: Option<Uuid>,
    /// Priority (higher first).
    pub priority: i16,
    /// `queued`, `running`, `succeeded`, `failed` (will retry) or `dead`.
    pub status: String,
    /// Runs so far.
    pub attempts: i32,
    /// Runs allowed.
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

/// Listing filters.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this tenant's jobs.
    pub tenant: Option<Uuid>,
    /// Only jobs created before this one (keyset pagination, newest first).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

/// Jobs per status, for metrics.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    /// `(status, count)` for every status present.
    pub by_status: Vec<(String, i64)>,
}

const JOB_COLUMNS: &str = "id, kind, payload, tenant_id, priority, status, attempts, max_attempts, run_at, \
                           last_error, created_at, updated_at, finished_at";

/// Jobs matching `filter`, newest first, payloads redacted. Ids are time-ordered (UUIDv7), so the id orders too.
pub async fn list_jobs(
    control: &ControlDb,
    filter: &JobFilter,
) -> Result<Vec<JobRecord>, JobError> {
    let jobs = sqlx::query_as::<_, JobRecord>(&format!(
        "select {JOB_COLUMNS} from public.jobs
         where ($1::text is null or status = $1)
           and ($2::text is null or kind = $2)
           and ($3::uuid is null or tenant_id = $3)
           and ($4::uuid is null or id < $4)
         order by id desc
         limit $5"
    ))
    .bind(&filter.status)
    .bind(&filter.kind)
    .bind(filter.tenant)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(control.pool())
    .await?;
    Ok(jobs.into_iter().map(redacted).collect())
}

/// One job, its payload redacted.
pub async fn get_job(control: &ControlDb, id: Uuid) -> Result<JobRecord, JobError> {
    sqlx::query_as::<_, JobRecord>(&format!(
        "select {JOB_COLUMNS} from public.jobs where id = $1"
    ))
    .bind(id)
    .fetch_optional(control.pool())
    .await?
    .map(redacted)
    .ok_or(JobError::NotFound)
}

/// Puts a dead (or failed) job back in the queue, due now, with a fresh set of attempts.
pub async fn retry_job(control: &ControlDb, id: Uuid) -> Result<JobRecord, JobError> {
    let retried = sqlx::query_as::<_, JobRecord>(&format!(
        "update public.jobs
         set status = 'queued', attempts = 0, run_at = now(), finished_at = null, updated_at = now()
         where id = $1 and status in ('dead', 'failed')
         returning {JOB_COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(control.pool())
    .await?;
    match retried {
        Some(job) => {
            sqlx::query("select pg_notify('canopy_jobs', $1)")
                .bind(&job.kind)
                .execute(control.pool())
                .await?;
            Ok(redacted(job))
        }
        None => Err(JobError::NotRetryable(get_job(control, id).await?.status)),
    }
}

/// Jobs per status.
pub async fn queue_depth(control: &ControlDb) -> Result<QueueDepth, JobError> {
    let by_status =
        sqlx::query_as("select status, count(*) from public.jobs group by status order by status")
            .fetch_all(control.pool())
            .await?;
    Ok(QueueDepth { by_status })
}

/// What operators see in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// Field names whose values are secrets wherever they appear in a payload.
const SECRET_FIELDS: &[&str] = &[
    "token",
    "link",
    "password",
    "secret",
    "api_key",
    "authorization",
];

/// Suffixes of field names whose values are secrets (`reset_token`, `client_secret`, …).
const SECRET_SUFFIXES: &[&str] = &["_token", "_secret", "_password", "_link"];

fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_FIELDS.contains(&name.as_str()) || SECRET_SUFFIXES.iter().any(|s| name.ends_with(s))
}

fn holds_token_parameter(text: &str) -> bool {
    text.to_ascii_lowercase().contains("token=")
}

/// Replaces, anywhere in `payload`, the values of fields named like secrets and every
/// string holding a `token=` parameter with [`REDACTED`].
pub fn redact_payload(payload: &mut Value) {
    match payload {
        Value::Object(fields) => {
            for (name, value) in fields.iter_mut() {
                if is_secret_field(name) && !value.is_null() {
                    *value = Value::String(REDACTED.to_owned());
                } else {
                    redact_payload(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_payload),
        Value::String(text) if holds_token_parameter(text) => {
            *text = REDACTED.to_owned();
        }
        _ => {}
    }
}

fn redacted(mut job: JobRecord) -> JobRecord {
    redact_payload(&mut job.payload);
    job
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let mut payload = json!({
            "to": "ada@example.com",
            "template": "verification",
            "vars": {
                "user_name": "Ada",
                "link": "https://acme.example/verify-email?token=abc",
                "expires_in": "1day",
            },
            "reset_token": "abc",
            "Client_Secret": "s3cret",
            "password": null,
            "notes": ["see https://x.example/?a=1&TOKEN=abc", "plain"],
            "file_id": "0190",
        });
        redact_payload(&mut payload);
        assert_eq!(
            payload,
            json!({
                "to": "ada@example.com",
                "template": "verification",
                "vars": {"user_name": "Ada", "link": REDACTED, "expires_in": "1day"},
                "reset_token": REDACTED,
                "Client_Secret": REDACTED,
                "password": null,
                "notes": [REDACTED, "plain"],
                "file_id": "0190",
            })
        );
    }

    #[test]
    fn payloads_without_secrets_are_unchanged() {
        let original =
            json!({"user_id": "0190", "purpose": "verify_email", "email": "a@b.c", "n": 3});
        let mut payload = original.clone();
        redact_payload(&mut payload);
        assert_eq!(payload, original);
    }
}
