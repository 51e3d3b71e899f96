//! Two-factor authentication helpers: enrolling a user's authenticator through the API,
//! and the codes of its secret at a given step.

use identity::mfa::{self, TotpSecret};
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::{
    TestApp,
    auth::{PASSWORD, Tokens},
};

/// An enrolled authenticator: its secret and the recovery codes it came with.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// The secret, parsed from the enrollment's base32.
    pub secret: TotpSecret,
    /// The ten recovery codes of the confirmation.
    pub recovery_codes: Vec<String>,
}

impl Authenticator {
    /// The code of `step` (see [`now_step`]).
    pub fn code(&self, step: u64) -> String {
        self.secret.code_at(step)
    }
}

/// The TOTP step of this instant.
pub fn now_step() -> u64 {
    mfa::step_at(chrono::Utc::now())
}

/// Waits, if the current 30-second step ends within `margin` seconds, for the next one to
/// begin: tests that compute codes for steps relative to now need the server to see the
/// same step. This waits on the clock, not on the server.
pub async fn clear_of_step_boundary(margin: u64) {
    let now = chrono::Utc::now();
    let into = u64::try_from(now.timestamp()).unwrap_or(0) % mfa::STEP_SECONDS;
    if into + margin >= mfa::STEP_SECONDS {
        let wait = mfa::STEP_SECONDS - into;
        tokio::time::sleep(std::time::Duration::from_millis(wait * 1000 + 200)).await;
    }
}

impl TestApp {
    /// `POST /v1/me/mfa/totp` (with [`PASSWORD`]) then `…/confirm` with the current code,
    /// as `access`: the authenticator, asserting each step succeeds.
    pub async fn enroll_totp(&self, tenant: &str, access: &str) -> Authenticator {
        let started = self
            .send_authed(
                Method::POST,
                tenant,
                "/v1/me/mfa/totp",
                access,
                Some(&json!({ "password": PASSWORD })),
            )
            .await;
        assert_eq!(started.status(), 201, "start enrollment");
        let body: Value = started.json().await.expect("JSON");
        let secret =
            TotpSecret::from_base32(body["secret"].as_str().expect("secret")).expect("base32");
        let confirmed = self
            .send_authed(
                Method::POST,
                tenant,
                "/v1/me/mfa/totp/confirm",
                access,
                Some(&json!({ "code": secret.code_at(now_step()) })),
            )
            .await;
        assert_eq!(confirmed.status(), 200, "confirm enrollment");
        let body: Value = confirmed.json().await.expect("JSON");
        let recovery_codes = body["recovery_codes"]
            .as_array()
            .expect("recovery codes")
            .iter()
            .map(|c| c.as_str().expect("code").to_owned())
            .collect();
        Authenticator {
            secret,
            recovery_codes,
        }
    }

    /// Logs in with the password and expects the second step: the `mfa_token`.
    pub async fn login_for_mfa(&self, tenant: &str, email: &str, password: &str) -> String {
        let response = self.login(tenant, email, password).await;
        assert_eq!(response.status(), 200, "login of {email}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["status"], "mfa_required", "{body}");
        body["mfa_token"].as_str().expect("mfa_token").to_owned()
    }

    /// `POST /v1/auth/mfa` with `body` (the MFA token and a code).
    pub async fn verify_mfa(&self, tenant: &str, body: &Value) -> Response {
        self.post_as(tenant, "/v1/auth/mfa", body).await
    }

    /// The whole MFA login: password, then the code of `step`; the tokens.
    pub async fn login_with_code(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
        code: &str,
    ) -> Tokens {
        let token = self.login_for_mfa(tenant, email, password).await;
        let response = self
            .verify_mfa(tenant, &json!({ "mfa_token": token, "code": code }))
            .await;
        assert_eq!(response.status(), 200, "MFA step of {email}");
        Tokens::from_json(&response.json().await.expect("JSON"))
    }
}
