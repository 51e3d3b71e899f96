//! Realtime: tickets, the WebSocket and its SSE twin, live product events across two
//! instances, tenant isolation, permissions at delivery, revocation closing sockets
//! everywhere, heartbeats, the slow-consumer cut-off, limits and shutdown.
//!
//! Nothing here sleeps to synchronise: every wait is for an observable event (a frame, a
//! close code, a counter) under a generous timeout, and "nothing arrived" is observed as a
//! later marker event arriving first.

use std::time::Duration;

use e2e::{TestApp, assert_problem, auth::Signup, spawn_app};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};
use uuid::Uuid;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound on any single wait.
const WAIT: Duration = Duration::from_secs(10);

/// How a test connection authenticates.
enum Auth<'a> {
    Bearer(&'a str),
    Ticket(&'a str),
    Nothing,
}

fn socket_url(app: &TestApp, auth: &Auth<'_>) -> String {
    let base = format!("ws://127.0.0.1:{}/v1/realtime", app.port);
    match auth {
        Auth::Ticket(ticket) => format!("{base}?ticket={ticket}"),
        Auth::Bearer(_) | Auth::Nothing => base,
    }
}

/// Opens the WebSocket as tenant `tenant`; the refusal's status and body otherwise.
async fn try_connect(app: &TestApp, tenant: &str, auth: Auth<'_>) -> Result<Ws, (u16, Value)> {
    let mut request = socket_url(app, &auth)
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert("x-tenant", HeaderValue::from_str(tenant).expect("header"));
    if let Auth::Bearer(token) = auth {
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(
                content_type.starts_with("application/problem+json"),
                "refusals are problems, not {content_type}"
            );
            let body = response.into_body().unwrap_or_default();
            Err((status, serde_json::from_slice(&body).expect("problem JSON")))
        }
        Err(other) => panic!("WebSocket connection failed: {other}"),
    }
}

async fn connect(app: &TestApp, tenant: &str, auth: Auth<'_>) -> Ws {
    try_connect(app, tenant, auth)
        .await
        .unwrap_or_else(|(status, body)| panic!("refused with {status}: {body}"))
}

/// The next JSON text frame (pings are answered by the client library).
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; its code. Frames before it are skipped.
async fn close_code(ws: &mut Ws, within: Duration) -> u16 {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("socket failed before a close frame: {error}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    })
    .await
    .expect("the close frame in time")
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// Subscribes to product events and waits for the server to confirm it.
async fn subscribe_products(ws: &mut Ws) {
    send(
        ws,
        json!({"type": "subscribe", "events": ["product.created", "product.updated", "product.deleted", "file.ready"]}),
    )
    .await;
    assert_eq!(next_frame(ws).await["type"], "subscribed");
}

/// Waits until `app`'s hub has `count` open connections of `user` (a connection is
/// registered before the upgrade answers, so this is immediate; it guards the check).
fn assert_connections(app: &TestApp, tenant: Uuid, user: Uuid, count: usize) {
    assert_eq!(
        app.state
            .realtime
            .connections_of(tenancy::TenantId(tenant), user),
        count
    );
}

async fn ticket(app: &TestApp, tenant: &str, access: &str) -> String {
    let response = app
        .send_authed(Method::POST, tenant, "/v1/realtime/tickets", access, None)
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 30);
    body["ticket"].as_str().expect("ticket").to_owned()
}

async fn product(app: &TestApp, org: &Signup, name: &str) -> Value {
    app.create_product_ok(org, &json!({"name": name, "price": 100, "currency": "USD"}))
        .await
}

/// Publishes a `file.ready` marker for `tenant` straight to Redis, as a later slice's file
/// pipeline will.
async fn marker(app: &TestApp, tenant: Uuid) -> Uuid {
    let id = Uuid::new_v4();
    let envelope = ::realtime::Envelope::new(
        ::realtime::EventKind::FileReady,
        tenancy::TenantId(tenant),
        id,
        None,
    );
    ::realtime::publish(&app.state.redis, &envelope)
        .await
        .expect("publish");
    id
}

async fn redis_keys(app: &TestApp, pattern: &str) -> Vec<String> {
    let mut conn = app.state.redis.get().await.expect("redis");
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut *conn)
        .await
        .expect("KEYS")
}

#[tokio::test]
async fn a_ticket_works_once_in_its_own_tenant_and_is_stored_hashed() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.signup("globex").await;
    app.state.realtime.listening().await;
    let raw = ticket(&app, "acme", &org.tokens.access).await;

    // Redis holds its SHA-256 with a TTL of at most 30 s, never the ticket itself.
    let keys = redis_keys(&app, &format!("canopy:t:{}:rt:ticket:*", org.tenant_id)).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let secret = raw.splitn(3, '_').nth(2).expect("rt_<tenant>_<secret>");
    assert!(!keys[0].contains(secret));
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret)
        .expect("base64url secret");
    let digest: String =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&decoded))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    assert_eq!(
        keys[0],
        format!("canopy:t:{}:rt:ticket:{digest}", org.tenant_id)
    );
    let mut conn = app.state.redis.get().await.expect("redis");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut *conn)
        .await
        .expect("PTTL");
    drop(conn);
    assert!(0 < ttl && ttl <= 30_000, "ttl {ttl}");

    // Another tenant's address refuses it without spending it.
    let (status, problem) = try_connect(&app, "globex", Auth::Ticket(&raw))
        .await
        .expect_err("wrong tenant");
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("wrong_tenant"))
    );

    let mut ws = connect(&app, "acme", Auth::Ticket(&raw)).await;
    assert_connections(&app, org.tenant_id, org.owner_id, 1);
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut ws).await, json!({"type": "pong"}));

    // Single use.
    let (status, problem) = try_connect(&app, "acme", Auth::Ticket(&raw))
        .await
        .expect_err("used twice");
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("ticket_invalid"))
    );
    assert!(
        redis_keys(&app, &format!("canopy:t:{}:rt:ticket:*", org.tenant_id))
            .await
            .is_empty()
    );
    // Made-up and expired-looking tickets are refused alike; so is no credential at all.
    let forged = format!("rt_{}_{}", org.tenant_id.simple(), "A".repeat(43));
    let (status, _) = try_connect(&app, "acme", Auth::Ticket(&forged))
        .await
        .expect_err("forged");
    assert_eq!(status, 401);
    let (status, problem) = try_connect(&app, "acme", Auth::Nothing)
        .await
        .expect_err("anonymous");
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // An expired ticket: the TTL is Redis's, so a ticket issued with a short one is gone
    // once Redis says so.
    let holder = ::realtime::tickets::Holder {
        user: org.owner_id,
        session: Some(Uuid::new_v4()),
        api_key: None,
        key_permissions: Vec::new(),
    };
    let short = ::realtime::tickets::issue(
        &app.state.redis,
        tenancy::TenantId(org.tenant_id),
        &holder,
        Duration::from_millis(1),
    )
    .await
    .expect("issue");
    tokio::time::timeout(WAIT, async {
        while !redis_keys(&app, &format!("canopy:t:{}:rt:ticket:*", org.tenant_id))
            .await
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("Redis expires the ticket");
    let (status, _) = try_connect(&app, "acme", Auth::Ticket(&short))
        .await
        .expect_err("expired");
    assert_eq!(status, 401);
    let _ = other;
}

#[tokio::test]
async fn a_product_made_on_one_instance_reaches_a_client_of_the_other_once_with_ids_only() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let org = a.signup("acme").await;
    a.state.realtime.listening().await;
    b.state.realtime.listening().await;
    let mut ws = connect(&b, "acme", Auth::Bearer(&org.tokens.access)).await;
    subscribe_products(&mut ws).await;

    // A change that rolls back (a validation failure) publishes nothing.
    let refused = a
        .create_product(
            "acme",
            &org.tokens.access,
            &json!({"name": "", "price": -1, "currency": "USD"}),
        )
        .await;
    assert_eq!(refused.status(), 422);

    let created = product(&a, &org, "Lamp").await;
    let event = next_frame(&mut ws).await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["event"], "product.created");
    assert_eq!(event["id"], created["id"]);
    assert_eq!(event["version"], created["version"]);
    assert_eq!(event["tenant_id"], org.tenant_id.to_string());
    assert!(event.get("name").is_none() && event.get("price").is_none());
    let keys: Vec<&str> = event
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "type",
            "event",
            "tenant_id",
            "id",
            "version",
            "published_at"
        ]
    );

    // Exactly once: the next frame is the answer to a ping sent now.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut ws).await, json!({"type": "pong"}));

    let id = created["id"].as_str().expect("id");
    let changed = a
        .send_authed(
            Method::PATCH,
            "acme",
            &format!("/v1/products/{id}"),
            &org.tokens.access,
            Some(&json!({"name": "Brighter lamp"})),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let event = next_frame(&mut ws).await;
    assert_eq!(
        (event["event"].as_str(), event["id"].as_str()),
        (Some("product.updated"), Some(id))
    );
    assert_eq!(event["version"], created["version"].as_i64().unwrap() + 1);
    let deleted = a
        .send_authed(
            Method::DELETE,
            "acme",
            &format!("/v1/products/{id}"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(next_frame(&mut ws).await["event"], "product.deleted");

    // Unsubscribed kinds stop arriving: the marker comes first.
    send(
        &mut ws,
        json!({"type": "unsubscribe", "events": ["product.created"]}),
    )
    .await;
    assert_eq!(
        next_frame(&mut ws).await,
        json!({"type": "subscribed", "events": [
            "product.updated", "product.deleted", "file.ready", "file.failed", "subscription.updated"
        ]})
    );
    product(&a, &org, "Unseen").await;
    let mark = marker(&a, org.tenant_id).await;
    assert_eq!(next_frame(&mut ws).await["id"], mark.to_string());
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let acme = a.signup("acme").await;
    let globex = a.signup("globex").await;
    a.state.realtime.listening().await;
    b.state.realtime.listening().await;

    // Acme's token with Globex's address: refused before the upgrade.
    let (status, problem) = try_connect(&a, "globex", Auth::Bearer(&acme.tokens.access))
        .await
        .expect_err("wrong tenant");
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("wrong_tenant"))
    );
    // Acme's ticket on the other instance with Globex's address: refused too.
    let raw = ticket(&a, "acme", &acme.tokens.access).await;
    let (status, problem) = try_connect(&b, "globex", Auth::Ticket(&raw))
        .await
        .expect_err("wrong tenant");
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("wrong_tenant"))
    );
    // A ticket for Globex cannot be made with Acme's token either.
    let response = a
        .send_authed(
            Method::POST,
            "globex",
            "/v1/realtime/tickets",
            &acme.tokens.access,
            None,
        )
        .await;
    assert_problem(response, 403, "wrong_tenant").await;

    // Acme listens on both instances while Globex makes products; then an Acme marker.
    let mut on_a = connect(&a, "acme", Auth::Ticket(&raw)).await;
    let mut on_b = connect(&b, "acme", Auth::Bearer(&acme.tokens.access)).await;
    subscribe_products(&mut on_a).await;
    subscribe_products(&mut on_b).await;
    let mut globex_ws = connect(&b, "globex", Auth::Bearer(&globex.tokens.access)).await;
    subscribe_products(&mut globex_ws).await;
    let theirs = product(&a, &globex, "Secret").await;
    product(&b, &globex, "Secret too").await;
    // Globex's own client gets them (so they were published)...
    assert_eq!(next_frame(&mut globex_ws).await["id"], theirs["id"]);
    // ...Acme's clients get only Acme's marker.
    let ours = product(&a, &acme, "Ours").await;
    for ws in [&mut on_a, &mut on_b] {
        let event = next_frame(ws).await;
        assert_eq!(event["id"], ours["id"]);
        assert_eq!(event["tenant_id"], acme.tenant_id.to_string());
    }
    // A payload claiming another tenant, on Acme's channel, is delivered as Acme's (the
    // channel names the tenant, never the payload) and never to Globex.
    let forged = ::realtime::Envelope::new(
        ::realtime::EventKind::FileReady,
        tenancy::TenantId(globex.tenant_id),
        Uuid::new_v4(),
        None,
    );
    let mut conn = a.state.redis.get().await.expect("redis");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("canopy:rt:t:{}", acme.tenant_id))
        .arg(serde_json::to_string(&forged).expect("json"))
        .query_async(&mut *conn)
        .await
        .expect("publish");
    drop(conn);
    let event = next_frame(&mut on_a).await;
    assert_eq!(event["id"], forged.id.to_string());
    assert_eq!(event["tenant_id"], acme.tenant_id.to_string());
    let mark = marker(&a, globex.tenant_id).await;
    // (Globex's client has its second product event first.)
    assert_eq!(next_frame(&mut globex_ws).await["event"], "product.created");
    assert_eq!(next_frame(&mut globex_ws).await["id"], mark.to_string());
}

#[tokio::test]
async fn events_go_only_to_holders_of_their_permission_and_stop_when_it_is_revoked() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    app.state.realtime.listening().await;
    let files_only = app
        .create_role_ok(
            &org,
            &json!({"name": "files-only", "permissions": ["files:read"]}),
        )
        .await;
    let viewer = app.role_id(&org, "viewer").await;
    let (_, blind) = app
        .user_with_roles(&org, "blind@acme.example", &[files_only])
        .await;
    let (reader, sighted) = app
        .user_with_roles(&org, "reader@acme.example", &[viewer])
        .await;
    let mut blind_ws = connect(&app, "acme", Auth::Bearer(&blind.access)).await;
    let mut sighted_ws = connect(&app, "acme", Auth::Bearer(&sighted.access)).await;
    subscribe_products(&mut blind_ws).await;
    subscribe_products(&mut sighted_ws).await;

    let made = product(&app, &org, "Lamp").await;
    assert_eq!(next_frame(&mut sighted_ws).await["id"], made["id"]);
    let mark = marker(&app, org.tenant_id).await;
    assert_eq!(next_frame(&mut blind_ws).await["id"], mark.to_string());
    assert_eq!(next_frame(&mut sighted_ws).await["id"], mark.to_string());

    // The reader loses `products:read`: product events stop at once.
    let response = app
        .set_roles("acme", &org.tokens.access, reader, &[files_only])
        .await;
    assert_eq!(response.status(), 200);
    product(&app, &org, "Unseen").await;
    let mark = marker(&app, org.tenant_id).await;
    assert_eq!(next_frame(&mut sighted_ws).await["id"], mark.to_string());
}

/// Opens one socket of `access` on each of `apps`.
async fn sockets(apps: [&TestApp; 2], access: &str) -> Vec<Ws> {
    let mut out = Vec::new();
    for app in apps {
        out.push(connect(app, "acme", Auth::Bearer(access)).await);
    }
    out
}

/// Each socket gets the close frame with `code` within a second.
/// Every socket closes with `code`, soon: the periodic re-check is 30 s away, so only the
/// announcement can have closed them. (Within a second as designed; the bound leaves room
/// for a loaded 2-core CI machine.)
async fn all_close(sockets: &mut [Ws], code: u16) {
    let started = tokio::time::Instant::now();
    for ws in sockets.iter_mut() {
        assert_eq!(close_code(ws, Duration::from_secs(5)).await, code);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn logout_ban_and_suspension_close_sockets_on_both_instances_within_a_second() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let org = a.signup("acme").await;
    a.state.realtime.listening().await;
    b.state.realtime.listening().await;
    let viewer = a.role_id(&org, "viewer").await;

    // Logging out ends the session: its sockets close (4001); another session's stay.
    let (_, leaving) = a
        .user_with_roles(&org, "leaving@acme.example", &[viewer])
        .await;
    let mut doomed = sockets([&a, &b], &leaving.access).await;
    let mut staying = connect(&b, "acme", Auth::Bearer(&org.tokens.access)).await;
    let logout = a
        .authed(Method::POST, "acme", "/v1/auth/logout", &leaving.access)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), 204);
    all_close(&mut doomed, 4001).await;
    send(&mut staying, json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut staying).await, json!({"type": "pong"}));

    // Banning a user closes every socket of theirs, the ticket-made one too.
    let (banned, tokens) = a
        .user_with_roles(&org, "banned@acme.example", &[viewer])
        .await;
    let raw = ticket(&b, "acme", &tokens.access).await;
    let mut doomed = sockets([&a, &b], &tokens.access).await;
    doomed.push(connect(&a, "acme", Auth::Ticket(&raw)).await);
    let response = a
        .send_authed(
            Method::PATCH,
            "acme",
            &format!("/v1/users/{banned}"),
            &org.tokens.access,
            Some(&json!({"status": "banned"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    all_close(&mut doomed, 4001).await;

    // Suspending the tenant closes everyone's (4003).
    let mut everyone = sockets([&a, &b], &org.tokens.access).await;
    everyone.push(staying);
    let key = a.admin_key().await;
    let response = a
        .request(
            Method::PATCH,
            &format!("/v1/admin/tenants/{}", org.tenant_id),
        )
        .bearer_auth(key)
        .json(&json!({"status": "suspended"}))
        .send()
        .await
        .expect("suspend");
    assert_eq!(response.status(), 200);
    all_close(&mut everyone, 4003).await;
    let (status, problem) = try_connect(&b, "acme", Auth::Bearer(&org.tokens.access))
        .await
        .expect_err("suspended");
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("tenant_suspended"))
    );
}

/// A WebSocket client that never reads on its own and never answers pings: the handshake
/// by hand, then raw frames on demand.
struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Connects with a small receive buffer (so that not reading soon blocks the server).
    async fn connect(app: &TestApp, access: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("buffer size");
        let mut stream = socket
            .connect(format!("127.0.0.1:{}", app.port).parse().expect("address"))
            .await
            .expect("connect");
        let request = format!(
            "GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Tenant: acme\r\nAuthorization: Bearer {access}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut client = Self {
            stream,
            buffer: Vec::new(),
        };
        let head = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&client.buffer[..end]).into_owned();
                    client.buffer.drain(..end + 4);
                    return head;
                }
                client.fill().await;
            }
        })
        .await
        .expect("handshake in time");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection ended before a close frame");
        self.buffer.extend_from_slice(&chunk[..n]);
    }

    /// The next frame: opcode and payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buffer.len() >= 2 {
                let opcode = self.buffer[0] & 0x0f;
                let (len, header) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                        4,
                    ),
                    127 if self.buffer.len() >= 10 => (
                        usize::try_from(u64::from_be_bytes(
                            self.buffer[2..10].try_into().expect("8 bytes"),
                        ))
                        .expect("length"),
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return (opcode, payload);
                }
            }
            self.fill().await;
        }
    }

    /// Reads until the close frame; its code, and how many event frames came before it.
    async fn close_code(&mut self) -> (u16, usize) {
        tokio::time::timeout(WAIT, async {
            let mut events = 0;
            loop {
                match self.frame().await {
                    (0x8, payload) => {
                        return (u16::from_be_bytes([payload[0], payload[1]]), events);
                    }
                    (0x1, _) => events += 1,
                    _ => {}
                }
            }
        })
        .await
        .expect("the close frame in time")
    }
}

#[tokio::test]
async fn a_client_that_answers_nothing_is_dropped_after_the_idle_timeout() {
    let app = TestApp::builder()
        .env("realtime_ping", "200ms")
        .env("realtime_idle", "2s")
        .spawn()
        .await;
    let org = app.signup("acme").await;
    // A client that answers pings stays past the idle timeout: it sees several.
    let mut lively = connect(&app, "acme", Auth::Bearer(&org.tokens.access)).await;
    let mut silent = RawClient::connect(&app, &org.tokens.access).await;
    let silent_closed = silent.close_code();
    tokio::pin!(silent_closed);
    let mut pings = 0;
    let code = loop {
        tokio::select! {
            (code, _) = &mut silent_closed => break code,
            // Reading answers the server's pings.
            message = lively.next() => match message {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("unexpected {other:?}"),
            },
        }
    };
    assert_eq!(code, 4008);
    assert!(pings >= 2, "{pings} pings");
    send(&mut lively, json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut lively).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_others_keep_receiving() {
    let app = TestApp::builder().env("realtime_queue", "16").spawn().await;
    let org = app.signup("acme").await;
    app.state.realtime.listening().await;
    let mut slow = RawClient::connect(&app, &org.tokens.access).await;
    let mut reader = connect(&app, "acme", Auth::Bearer(&org.tokens.access)).await;
    let cut = app.state.realtime.cut_offs();
    let tenant = tenancy::TenantId(org.tenant_id);
    let mut published = 0;
    // Batches of 8, each read by the reader before the next: its queue never holds more,
    // while the slow client's socket buffers, then its queue, fill up.
    while *cut.borrow() == 0 {
        assert!(published < 200_000, "the slow client was never cut off");
        let batch: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        for id in &batch {
            let envelope = ::realtime::Envelope::new(
                ::realtime::EventKind::ProductUpdated,
                tenant,
                *id,
                Some(1),
            );
            ::realtime::publish(&app.state.redis, &envelope)
                .await
                .expect("publish");
        }
        for id in &batch {
            assert_eq!(next_frame(&mut reader).await["id"], id.to_string());
        }
        published += batch.len();
    }
    let (code, received) = slow.close_code().await;
    assert_eq!(code, 4009);
    assert!(received < published, "{received} of {published}");
    // The reader was never held up and still receives.
    let made = product(&app, &org, "After").await;
    assert_eq!(next_frame(&mut reader).await["id"], made["id"]);
    assert_eq!(*cut.borrow(), 1);
}

#[tokio::test]
async fn malformed_oversized_and_too_frequent_messages_and_too_many_connections() {
    let app = TestApp::builder()
        .env("realtime_max_message", "1KiB")
        .env("realtime_messages_per_second", "5")
        .env("realtime_max_per_user", "2")
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let mut ws = connect(&app, "acme", Auth::Bearer(&org.tokens.access)).await;

    // Mistakes get an error frame with a stable code; the connection stays.
    for (frame, code) in [
        ("not json".to_owned(), "malformed_message"),
        (json!({"type": "shout"}).to_string(), "malformed_message"),
        (
            json!({"type": "subscribe", "events": ["chat.message"]}).to_string(),
            "unknown_event",
        ),
    ] {
        ws.send(Message::Text(frame.into())).await.expect("send");
        let error = next_frame(&mut ws).await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(code))
        );
    }
    // A third connection of the user is refused before the upgrade.
    let mut second = connect(&app, "acme", Auth::Bearer(&org.tokens.access)).await;
    let (status, problem) = try_connect(&app, "acme", Auth::Bearer(&org.tokens.access))
        .await
        .expect_err("over the limit");
    assert_eq!(
        (
            status,
            problem["code"].as_str(),
            problem["allowed"].as_u64()
        ),
        (429, Some("too_many_connections"), Some(2))
    );

    // Too big: an error frame, then 4013.
    ws.send(Message::Text("x".repeat(2048).into()))
        .await
        .expect("send");
    assert_eq!(next_frame(&mut ws).await["code"], "message_too_big");
    assert_eq!(close_code(&mut ws, WAIT).await, 4013);

    // Too many a second: the sixth gets an error frame, then 4029. (The window may turn
    // between two messages, so keep sending until it trips; at most a few seconds' worth.)
    let mut tripped = false;
    for _ in 0..100 {
        send(&mut second, json!({"type": "ping"})).await;
        let answer = next_frame(&mut second).await;
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "rate_limited");
            tripped = true;
            break;
        }
        assert_eq!(answer["type"], "pong");
    }
    assert!(tripped, "the rate limit never tripped");
    assert_eq!(close_code(&mut second, WAIT).await, 4029);

    // Both closed: the user may connect again.
    tokio::time::timeout(WAIT, async {
        while app
            .state
            .realtime
            .connections_of(tenancy::TenantId(org.tenant_id), org.owner_id)
            > 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connections unregistered");
    connect(&app, "acme", Auth::Bearer(&org.tokens.access)).await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let mut app = spawn_app().await;
    let org = app.signup("acme").await;
    let mut ws = connect(&app, "acme", Auth::Bearer(&org.tokens.access)).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut ws).await, json!({"type": "pong"}));
    let (code, stopped) = tokio::join!(close_code(&mut ws, WAIT), app.shutdown());
    stopped.expect("clean shutdown");
    assert_eq!(code, 1001);
}

#[tokio::test]
async fn the_same_events_arrive_as_server_sent_events() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    app.state.realtime.listening().await;
    let response = app
        .authed(
            Method::GET,
            "acme",
            "/v1/realtime/events?events=product.created",
            &org.tokens.access,
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let made = product(&app, &org, "Lamp").await;
    let mut text = String::new();
    let event = tokio::time::timeout(WAIT, async {
        loop {
            let chunk = body.next().await.expect("stream open").expect("chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(end) = text.find("\n\n") {
                let event = text[..end].to_owned();
                if event.contains("event: ") {
                    return event;
                }
                text.drain(..end + 2);
            }
        }
    })
    .await
    .expect("an event in time");
    assert!(event.contains("event: product.created"), "{event}");
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    let data: Value = serde_json::from_str(data).expect("json");
    assert_eq!(data["id"], made["id"]);
    assert_eq!(data["type"], "event");
    assert!(data.get("name").is_none());
    // Its connection counts like a socket.
    assert_connections(&app, org.tenant_id, org.owner_id, 1);
}
