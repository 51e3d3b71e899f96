//! `/health/live` and `/health/ready`.

use std::{future::Future, time::Instant};

use poem::web::Data;
use poem_openapi::{Enum, Object, OpenApi, payload::Json};
use serde::Serialize;
use tenancy::error_chain;

use crate::{
    AppState,
    error::{ApiError, ApiResult, ErrorCode},
    routes::ApiTag,
};

/// Probe endpoints.
pub struct HealthApi;

/// Liveness answer.
#[derive(Debug, Object)]
pub struct Liveness {
    /// Always `ok` when the process answers.
    pub status: String,
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Answered within the time budget.
    Up,
    /// Failed or did not answer in time.
    Down,
}

/// Result of checking one dependency.
#[derive(Debug, Clone, Object, Serialize)]
pub struct Check {
    /// Up or down.
    pub status: CheckStatus,
    /// Time the check took, in milliseconds.
    pub latency_ms: f64,
    /// Why it is down.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every dependency the service needs to serve requests.
#[derive(Debug, Clone, Object, Serialize)]
pub struct Checks {
    /// PostgreSQL.
    pub postgres: Check,
    /// Redis.
    pub redis: Check,
    /// The S3 bucket (`HeadBucket`).
    pub s3: Check,
}

/// Readiness answer.
#[derive(Debug, Object)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// Each dependency.
    pub checks: Checks,
}

#[OpenApi(tag = "ApiTag::Health")]
impl HealthApi {
    /// Liveness: the process is up and serving HTTP.
    ///
    /// Does not touch any dependency; restart the process only when this fails.
    #[oai(path = "/health/live", method = "get", operation_id = "get_liveness")]
    async fn get_liveness(&self) -> ApiResult<Json<Liveness>> {
        Ok(Json(Liveness {
            status: "ok".into(),
        }))
    }

    /// Readiness: PostgreSQL and Redis answer within the time budget.
    ///
    /// When a dependency fails or is too slow, answers 503 `not_ready` with `checks`
    /// naming it; take the instance out of rotation until it recovers.
    #[oai(path = "/health/ready", method = "get", operation_id = "get_readiness")]
    async fn get_readiness(&self, state: Data<&AppState>) -> ApiResult<Json<Readiness>> {
        let budget = state.settings.http.health_timeout;
        let postgres = check(budget, async {
            state.db.ping().await.map_err(|e| error_chain(&e))
        });
        let redis = check(budget, async {
            let mut conn = state.redis.get().await.map_err(|e| error_chain(&e))?;
            redis::cmd("PING")
                .query_async::<String>(&mut *conn)
                .await
                .map(drop)
                .map_err(|e| error_chain(&e))
        });
        let s3 = check(budget, async {
            state
                .storage
                .check_bucket()
                .await
                .map_err(|e| e.to_string())
        });
        let (postgres, redis, s3) = tokio::join!(postgres, redis, s3);
        let checks = Checks {
            postgres,
            redis,
            s3,
        };
        if [&checks.postgres, &checks.redis, &checks.s3]
            .iter()
            .all(|c| c.status == CheckStatus::Up)
        {
            return Ok(Json(Readiness {
                status: "ready".into(),
                checks,
            }));
        }
        let down: Vec<&str> = [
            ("postgres", &checks.postgres),
            ("redis", &checks.redis),
            ("s3", &checks.s3),
        ]
        .into_iter()
        .filter(|(_, c)| c.status == CheckStatus::Down)
        .map(|(name, _)| name)
        .collect();
        let checks = serde_json::to_value(&checks).map_err(ApiError::internal)?;
        Err(ApiError::new(
            ErrorCode::NotReady,
            format!("Unavailable: {}.", down.join(", ")),
        )
        .with_extension("checks", checks))
    }
}

async fn check(
    budget: std::time::Duration,
    probe: impl Future<Output = Result<(), String>>,
) -> Check {
    let start = Instant::now();
    let outcome = tokio::time::timeout(budget, probe).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no answer within {} ms", budget.as_millis())),
    };
    Check {
        status: if error.is_none() {
            CheckStatus::Up
        } else {
            CheckStatus::Down
        },
        latency_ms,
        error,
    }
}
