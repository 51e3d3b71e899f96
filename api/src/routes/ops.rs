//! Operational endpoints outside the OpenAPI document: `/metrics` and the problem type
//! pages that every problem's `type` points at.

use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{Data, Json, Path},
};
use serde_json::json;

use crate::{
    AppState,
    error::{ApiError, ErrorCode, FieldCode},
    metrics::PoolGauge,
};

/// Prometheus text exposition of the process's metrics.
#[handler]
pub async fn metrics(state: Data<&AppState>) -> Response {
    match jobs::queue_depth(&state.db).await {
        Ok(depth) => state.metrics.set_queue_depth(&depth.by_status),
        Err(error) => {
            tracing::warn!(error = %tenancy::error_chain(&error), "queue depth unavailable for /metrics")
        }
    }
    let db = state.db.status();
    let redis = state.redis.state();
    let body = state.metrics.render(
        PoolGauge {
            open: db.size,
            idle: db.idle,
        },
        db.max,
        PoolGauge {
            open: redis.connections,
            idle: redis.idle_connections,
        },
    );
    body.with_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .with_status(StatusCode::OK)
        .into_response()
}

/// Documentation of one error code: what a problem's `type` resolves to.
#[handler]
pub async fn problem_type(Path(code): Path<String>) -> poem::Result<Json<serde_json::Value>> {
    let found = ErrorCode::ALL.iter().find(|c| c.to_string() == code);
    match found {
        Some(code) => {
            let mut page = json!({
                "code": code.to_string(),
                "status": code.status().as_u16(),
                "title": code.title(),
                "description": code.description(),
            });
            // The codes an entry of `errors` can carry.
            if *code == ErrorCode::ValidationFailed {
                page["field_codes"] = FieldCode::ALL
                    .iter()
                    .map(|c| json!({"code": c.as_str(), "description": c.description()}))
                    .collect();
            }
            Ok(Json(page))
        }
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("No problem type named `{code}`."),
        )
        .into()),
    }
}
