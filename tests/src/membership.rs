//! Helpers for tests of membership: the tenant's registration policy, invitations, and
//! the invitation links read from the app's development outbox (the email job mints the
//! token, so the outbox is the only place a link exists).

use std::collections::BTreeSet;

use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    TestApp,
    auth::{PASSWORD, Signup},
};

impl TestApp {
    /// `PATCH /v1/tenant` as `access`.
    pub async fn update_tenant(&self, tenant: &str, access: &str, body: &Value) -> Response {
        self.authed(Method::PATCH, tenant, "/v1/tenant", access)
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    /// Lets anyone register in `org` (policy `open`), as its owner.
    pub async fn open_registration(&self, org: &Signup) {
        self.open_registration_with(&org.slug, &org.tokens.access)
            .await;
    }

    /// Lets anyone register in tenant `slug`, as the owner [`TestApp::signup`] made
    /// (`owner@<slug>.example`), for helpers that only know the slug.
    pub async fn open_registration_as_owner(&self, slug: &str) {
        let owner = self
            .login_ok(slug, &format!("owner@{slug}.example"), PASSWORD)
            .await;
        self.open_registration_with(slug, &owner.access).await;
    }

    async fn open_registration_with(&self, slug: &str, access: &str) {
        let response = self
            .update_tenant(slug, access, &json!({"registration_policy": "open"}))
            .await;
        assert_eq!(response.status(), 200, "open registration of {slug}");
    }

    /// `POST /v1/invitations` as `access`.
    pub async fn invite(
        &self,
        tenant: &str,
        access: &str,
        email: &str,
        roles: &[Uuid],
    ) -> Response {
        self.authed(Method::POST, tenant, "/v1/invitations", access)
            .json(&json!({ "email": email, "role_ids": roles }))
            .send()
            .await
            .expect("request failed")
    }

    /// Invites `email` into `org` with `roles` as its owner (asserting success) and returns
    /// the invitation's id.
    pub async fn invite_ok(&self, org: &Signup, email: &str, roles: &[Uuid]) -> Uuid {
        let response = self
            .invite(&org.slug, &org.tokens.access, email, roles)
            .await;
        assert_eq!(response.status(), 201, "invite {email}");
        let body: Value = response.json().await.expect("JSON");
        body["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// `POST /v1/auth/accept-invitation` in `tenant`.
    pub async fn accept_invitation(&self, tenant: &str, token: &str, name: &str) -> Response {
        self.post_as(
            tenant,
            "/v1/auth/accept-invitation",
            &json!({ "token": token, "name": name, "password": PASSWORD }),
        )
        .await
    }

    /// Every invitation token emailed to `to` (any case) so far, from the outbox files.
    pub fn invitation_tokens(&self, to: &str) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(&self.settings.email.outbox_dir) else {
            return BTreeSet::new();
        };
        let to_header = format!("to: {}", to.to_lowercase());
        let mut tokens = BTreeSet::new();
        for entry in entries {
            let path = entry.expect("outbox entry").path();
            if path.extension().is_none_or(|e| e != "eml") {
                continue;
            }
            let message =
                decode_quoted_printable(&std::fs::read_to_string(&path).expect("outbox message"));
            let addressed = message
                .lines()
                .any(|l| l.trim_end().to_lowercase() == to_header);
            if !addressed {
                continue;
            }
            for (at, _) in message.match_indices("/accept-invitation?token=") {
                let rest = &message[at + "/accept-invitation?token=".len()..];
                let token: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                tokens.insert(token);
            }
        }
        tokens
    }

    /// The one invitation token emailed to `to` and not among `known`.
    pub fn new_invitation_token(&self, to: &str, known: &BTreeSet<String>) -> String {
        let fresh: Vec<String> = self
            .invitation_tokens(to)
            .difference(known)
            .cloned()
            .collect();
        assert_eq!(fresh.len(), 1, "exactly one new invitation link to {to}");
        fresh[0].clone()
    }
}

/// Undoes quoted-printable transfer encoding (soft line breaks and `=XX` escapes) of a
/// whole message; headers pass through unchanged.
fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'=' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
