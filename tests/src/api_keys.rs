//! Helpers for tests of tenant API keys: making one as a tenant's owner, and reading a
//! key's stored row.

use reqwest::{Method, Response};
use serde_json::Value;
use uuid::Uuid;

use crate::{TestApp, auth::Signup};

impl TestApp {
    /// `POST /v1/api-keys` as `access`.
    pub async fn create_api_key(&self, tenant: &str, access: &str, body: &Value) -> Response {
        self.send_authed(Method::POST, tenant, "/v1/api-keys", access, Some(body))
            .await
    }

    /// Makes a key as the owner of `org` (asserting success); returns its id and secret.
    pub async fn create_api_key_ok(&self, org: &Signup, body: &Value) -> (Uuid, String) {
        let response = self
            .create_api_key(&org.slug, &org.tokens.access, body)
            .await;
        assert_eq!(response.status(), 201, "create API key {body}");
        let created: Value = response.json().await.expect("JSON");
        (
            created["api_key"]["id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("uuid"),
            created["key"].as_str().expect("key").to_owned(),
        )
    }

    /// The stored secret hash of key `id` of tenant `tenant`.
    pub async fn api_key_hash(&self, tenant: Uuid, id: Uuid) -> Vec<u8> {
        let schema = tenancy::TenantId(tenant).schema_name();
        sqlx::query_scalar(&format!(
            r#"select secret_hash from "{schema}".api_keys where id = $1"#
        ))
        .bind(id)
        .fetch_one(self.state.db.pool())
        .await
        .expect("api key row")
    }
}
