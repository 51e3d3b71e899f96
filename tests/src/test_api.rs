//! Endpoints mounted under `/__test` in test apps only, to drive the request pipeline
//! through cases no production endpoint offers on demand (a panic, a leaked internal
//! error, a handler that waits for the test).

use std::sync::Arc;

use api::{
    error::{ApiError, ApiResult, FieldCode, FieldError},
    payload::{JsonBody, Validate, all_valid},
};
use poem::Route;
use poem_openapi::{Object, OpenApi, OpenApiService, payload::Json};
use serde::Deserialize;
use tokio::sync::Notify;

/// Lets a test hold a request inside its handler.
#[derive(Default)]
pub struct Gate {
    /// Notified when a `/__test/wait` handler has started.
    pub entered: Notify,
    /// Notify to let waiting handlers return.
    pub release: Notify,
}

/// A body with both shape and semantic rules.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
pub struct Echo {
    /// 1 to 20 characters.
    pub name: String,
    /// At most 100.
    pub count: u32,
}

impl Validate for Echo {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.name.is_empty() || self.name.chars().count() > 20 {
            errors.push(FieldError::new(
                "name",
                FieldCode::Length,
                "must be 1 to 20 characters",
            ));
        }
        if self.count > 100 {
            errors.push(FieldError::new(
                "count",
                FieldCode::OutOfRange,
                "must be at most 100",
            ));
        }
        all_valid(errors)
    }
}

struct TestApi {
    gate: Arc<Gate>,
}

#[OpenApi]
impl TestApi {
    #[oai(path = "/echo", method = "post")]
    async fn echo(&self, body: JsonBody<Echo>) -> Json<Echo> {
        Json(body.0)
    }

    #[oai(path = "/panic", method = "get")]
    async fn panic(&self) -> Json<String> {
        panic!("deliberate panic in a test handler")
    }

    #[oai(path = "/internal", method = "get")]
    async fn internal(&self) -> ApiResult<Json<String>> {
        Err(ApiError::internal(anyhow::anyhow!(
            "connection to postgres://canopy:hunter2@db-7/canopy refused"
        )))
    }

    #[oai(path = "/wait", method = "get")]
    async fn wait(&self) -> Json<String> {
        self.gate.entered.notify_one();
        self.gate.release.notified().await;
        Json("released".to_owned())
    }
}

/// The routes, ready for `Application::with_extra_routes`.
pub fn routes(gate: Arc<Gate>) -> Route {
    Route::new().nest("/", OpenApiService::new(TestApi { gate }, "test", "1"))
}
