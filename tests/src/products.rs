//! Helpers for tests of the product catalog.

use reqwest::{Method, Response};
use serde_json::Value;

use crate::{TestApp, auth::Signup};

impl TestApp {
    /// `POST /v1/products` as `access`.
    pub async fn create_product(&self, tenant: &str, access: &str, body: &Value) -> Response {
        self.send_authed(Method::POST, tenant, "/v1/products", access, Some(body))
            .await
    }

    /// Creates a product as the owner of `org` (asserting success) and returns it.
    pub async fn create_product_ok(&self, org: &Signup, body: &Value) -> Value {
        let response = self
            .create_product(&org.slug, &org.tokens.access, body)
            .await;
        assert_eq!(response.status(), 201, "create product {body}");
        response.json().await.expect("JSON")
    }

    /// `POST /v1/products/bulk` with these items as the owner of `org`.
    pub async fn bulk_create(&self, org: &Signup, items: &[Value]) -> Response {
        self.send_authed(
            Method::POST,
            &org.slug,
            "/v1/products/bulk",
            &org.tokens.access,
            Some(&serde_json::json!({ "items": items })),
        )
        .await
    }
}
