//! A stand-in for Stripe's API on loopback (the real one is out of reach here): it answers
//! the calls Canopy makes with minimal objects of the shapes async-stripe expects, records
//! every request (method, path and query, form fields, `Authorization`), and serves the
//! events a test gives it from `GET /v1/events`. Webhook deliveries go the other way, signed
//! for real with [`TestApp::deliver`](crate::TestApp::deliver).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use poem::{
    EndpointExt, Request, Route, Server, handler,
    listener::TcpAcceptor,
    web::{Data, Json},
};
use reqwest::Response;
use serde_json::{Value, json};

use crate::TestApp;

/// One request Stripe received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Form fields of a POST, decoded.
    pub form: BTreeMap<String, String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    events: Mutex<Vec<Value>>,
    customers: Mutex<u32>,
}

/// The fake; see the module docs.
pub struct FakeStripe {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

#[handler]
async fn answer(request: &Request, body: String, shared: Data<&Arc<Shared>>) -> Json<Value> {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let path = request.uri().path().to_owned();
    shared.requests.lock().expect("lock").push(Recorded {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        form: form.clone(),
        authorization: request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    Json(match path.as_str() {
        "/v1/customers" => {
            let mut count = shared.customers.lock().expect("lock");
            *count += 1;
            json!({"id": format!("cus_fake{count}"), "object": "customer", "created": 1,
                   "livemode": false, "email": form.get("email"), "metadata": {}})
        }
        "/v1/checkout/sessions" => json!({
            "id": "cs_fake", "object": "checkout.session", "automatic_tax": {"enabled": false},
            "created": 1, "custom_fields": [], "custom_text": {}, "expires_at": 2,
            "livemode": false, "mode": "subscription", "payment_method_types": ["card"],
            "payment_status": "unpaid", "shipping_options": [],
            "url": "https://checkout.stripe.test/c/pay/cs_fake"
        }),
        "/v1/billing_portal/sessions" => json!({
            "id": "bps_fake", "object": "billing_portal.session", "configuration": "bpc_fake",
            "created": 1, "customer": form.get("customer"), "livemode": false,
            "url": "https://billing.stripe.test/p/session/fake",
            "return_url": form.get("return_url")
        }),
        "/v1/events" => json!({
            "object": "list", "url": "/v1/events", "has_more": false,
            "data": shared.events.lock().expect("lock").clone()
        }),
        _ => json!({"error": {"type": "invalid_request_error", "message": "unknown path"}}),
    })
}

impl FakeStripe {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared::default());
        let app = Route::new().at("/*path", answer).data(shared.clone());
        let acceptor = TcpAcceptor::from_tokio(listener).expect("acceptor");
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            shared,
            server,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// Requests to `path` (without query).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.uri.split('?').next() == Some(path))
            .collect()
    }

    /// What `GET /v1/events` lists from now on.
    pub fn set_events(&self, events: Vec<Value>) {
        *self.shared.events.lock().expect("lock") = events;
    }

    /// Stops answering (connections are refused).
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The development webhook secret the test apps use.
pub const WEBHOOK_SECRET: &str = "whsec_canopy_development";

/// An event of `kind` about `object`, created at `created` (unix seconds).
pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "api_version": "2026-09-30.endive", "type": kind,
        "created": created, "livemode": false, "pending_webhooks": 1,
        "data": {"object": object}
    })
}

/// A subscription object.
pub fn subscription(id: &str, customer: &str, status: &str, price: &str, tenant: &str) -> Value {
    json!({
        "id": id, "object": "subscription", "customer": customer, "status": status,
        "metadata": {"tenant_id": tenant},
        "items": {"object": "list", "data": [{
            "id": format!("si_{id}"), "object": "subscription_item",
            "price": {"id": price, "object": "price"},
            "current_period_end": 1_900_000_000
        }]}
    })
}

/// Unix seconds now.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TestApp {
    /// `POST /webhooks/stripe` with `body` and this `Stripe-Signature` value.
    pub async fn deliver_raw(&self, body: &[u8], signature: Option<&str>) -> Response {
        let mut request = self
            .request(reqwest::Method::POST, "/webhooks/stripe")
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        request.send().await.expect("request failed")
    }

    /// Delivers `event`, signed now with the development secret.
    pub async fn deliver(&self, event: &Value) -> Response {
        let body = serde_json::to_vec(event).expect("JSON");
        let signature = billing::signature::header(&[WEBHOOK_SECRET], now(), &body);
        self.deliver_raw(&body, Some(&signature)).await
    }
}
