//! Helpers for tests of roles and permissions: the tenant's roles, custom roles, and users
//! holding given roles.

use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    TestApp,
    auth::{PASSWORD, Signup, Tokens},
};

impl TestApp {
    /// `method path` as tenant `tenant` with bearer token `access` and an optional JSON body.
    pub async fn send_authed(
        &self,
        method: Method,
        tenant: &str,
        path: &str,
        access: &str,
        body: Option<&Value>,
    ) -> Response {
        let request = self.authed(method, tenant, path, access);
        match body {
            Some(body) => request.json(body),
            None => request,
        }
        .send()
        .await
        .expect("request failed")
    }

    /// The tenant's roles, as its owner sees them.
    pub async fn roles(&self, org: &Signup) -> Vec<Value> {
        let response = self
            .get_authed(&org.slug, "/v1/roles", &org.tokens.access)
            .await;
        assert_eq!(response.status(), 200, "list roles");
        let body: Value = response.json().await.expect("JSON");
        body["items"].as_array().expect("items").clone()
    }

    /// The id of the tenant's role named `name`.
    pub async fn role_id(&self, org: &Signup, name: &str) -> Uuid {
        let roles = self.roles(org).await;
        let role = roles
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no role {name}"));
        role["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// Creates a custom role as `access`; returns the response.
    pub async fn create_role(&self, tenant: &str, access: &str, body: &Value) -> Response {
        self.send_authed(Method::POST, tenant, "/v1/roles", access, Some(body))
            .await
    }

    /// Creates a custom role as the owner (asserting success) and returns its id.
    pub async fn create_role_ok(&self, org: &Signup, body: &Value) -> Uuid {
        let response = self.create_role(&org.slug, &org.tokens.access, body).await;
        assert_eq!(response.status(), 201, "create role {body}");
        let role: Value = response.json().await.expect("JSON");
        role["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// `PUT /v1/users/{user}/roles` as `access`.
    pub async fn set_roles(
        &self,
        tenant: &str,
        access: &str,
        user: Uuid,
        roles: &[Uuid],
    ) -> Response {
        self.send_authed(
            Method::PUT,
            tenant,
            &format!("/v1/users/{user}/roles"),
            access,
            Some(&json!({ "role_ids": roles })),
        )
        .await
    }

    /// A verified, logged-in user of `org` holding exactly `roles` (set by the owner).
    pub async fn user_with_roles(
        &self,
        org: &Signup,
        email: &str,
        roles: &[Uuid],
    ) -> (Uuid, Tokens) {
        let user = self.register_verified(&org.slug, email).await;
        let response = self
            .set_roles(&org.slug, &org.tokens.access, user, roles)
            .await;
        assert_eq!(response.status(), 200, "set roles of {email}");
        let tokens = self.login_ok(&org.slug, email, PASSWORD).await;
        (user, tokens)
    }
}
