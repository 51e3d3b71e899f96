//! General rate limits: per client IP on unauthenticated routes, per user on authenticated
//! ones, one Redis round trip per request, `RateLimit-*` headers, and the fail-open policy.
//!
//! Every test here sends from an address of its own through a trusted proxy (the app
//! trusts 127.0.0.1), or as users of its own: the Redis and the peer address are shared by
//! every test running in parallel.

use std::collections::BTreeMap;

use e2e::{
    TestApp, assert_problem,
    auth::{PASSWORD, PrivateRedis},
};
use reqwest::{Method, Response};
use serde_json::json;

/// An IPv6 address in a /64 no other test uses (the limits count per /64).
fn unique_ip() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!(
        "2001:db8:{:x}:{:x}::1",
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]])
    )
}

fn header(response: &Response, name: &str) -> u64 {
    response.headers()[name]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number of seconds or requests")
}

/// Three requests a minute per address (a minute, so that no refill happens mid-test).
async fn app_limiting_addresses() -> TestApp {
    TestApp::builder()
        .env("trusted_proxies", "127.0.0.1/32")
        .env("rate_limit_ip_per_second", "0")
        .env("rate_limit_ip_per_minute", "3")
        .spawn()
        .await
}

fn from(app: &TestApp, forwarded_for: &str, path: &str) -> reqwest::RequestBuilder {
    app.request(Method::GET, path)
        .header("x-forwarded-for", forwarded_for)
}

#[tokio::test]
async fn a_burst_from_one_address_is_refused_with_the_limit_headers() {
    let app = app_limiting_addresses().await;
    let ip = unique_ip();
    let path = "/problems/not_found";
    let first = from(&app, &ip, path).send().await.expect("request");
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-limit"), 3);
    assert_eq!(header(&first, "ratelimit-remaining"), 2);
    assert!((1..=60).contains(&header(&first, "ratelimit-reset")));
    for _ in 0..2 {
        assert_eq!(
            from(&app, &ip, path)
                .send()
                .await
                .expect("request")
                .status(),
            200
        );
    }
    let refused = from(&app, &ip, path).send().await.expect("request");
    assert_eq!(header(&refused, "ratelimit-limit"), 3);
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    assert!((1..=60).contains(&header(&refused, "ratelimit-reset")));
    assert!((1..=20).contains(&header(&refused, "retry-after")));
    let problem = assert_problem(refused, 429, "rate_limited").await;
    assert_eq!(problem["limit"], "ip_per_minute");
    assert_eq!(problem["allowed"], 3);
    let metrics = app.scrape_metrics().await.text().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"canopy_rate_limited_total{limit="ip_per_minute"} 1"#),
        "{metrics}"
    );

    // Another address has its own bucket.
    let other = from(&app, &unique_ip(), path)
        .send()
        .await
        .expect("request");
    assert_eq!(other.status(), 200);
    assert_eq!(header(&other, "ratelimit-remaining"), 2);
}

#[tokio::test]
async fn a_spoofed_left_most_forwarded_entry_does_not_change_the_bucket() {
    let app = app_limiting_addresses().await;
    let ip = unique_ip();
    for n in 0..3 {
        // A client cannot pick its bucket by writing the left end of the header.
        let spoofed = format!("{}, {ip}", unique_ip());
        let response = from(&app, &spoofed, "/v1/tenant")
            .header("x-tenant", "nobody")
            .send()
            .await
            .expect("request");
        assert_eq!(header(&response, "ratelimit-remaining"), 2 - n);
    }
    let spoofed = format!("{}, {ip}", unique_ip());
    let refused = from(&app, &spoofed, "/v1/tenant")
        .header("x-tenant", "nobody")
        .send()
        .await
        .expect("request");
    assert_problem(refused, 429, "rate_limited").await;
}

#[tokio::test]
async fn a_non_ascii_forwarded_entry_does_not_hide_the_address_the_proxy_appended() {
    let app = app_limiting_addresses().await;
    let ip = unique_ip();
    // The client writes bytes that are not ASCII; the proxy appends the address it saw.
    let mut spoiled = b"\xff\xfe1.1.1.1, ".to_vec();
    spoiled.extend_from_slice(ip.as_bytes());
    let spoiled = reqwest::header::HeaderValue::from_bytes(&spoiled).expect("a header value");
    for n in 0..3 {
        let response = app
            .request(Method::GET, "/problems/not_found")
            .header("x-forwarded-for", spoiled.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-remaining"), 2 - n);
    }
    // Those requests were counted against `ip`, not against the proxy's own address.
    let refused = from(&app, &ip, "/problems/not_found")
        .send()
        .await
        .expect("request");
    assert_problem(refused, 429, "rate_limited").await;
}

#[tokio::test]
async fn readiness_counts_against_the_address_and_liveness_does_not() {
    let app = app_limiting_addresses().await;
    let ip = unique_ip();
    for n in 0..3 {
        let ready = from(&app, &ip, "/health/ready")
            .send()
            .await
            .expect("request");
        assert_eq!(ready.status(), 200);
        assert_eq!(header(&ready, "ratelimit-remaining"), 2 - n);
    }
    // Past the limit, readiness is refused before it touches PostgreSQL, Redis or S3.
    let refused = from(&app, &ip, "/health/ready")
        .send()
        .await
        .expect("request");
    let problem = assert_problem(refused, 429, "rate_limited").await;
    assert_eq!(problem["limit"], "ip_per_minute");
    // Liveness is never limited.
    for _ in 0..5 {
        let live = from(&app, &ip, "/health/live")
            .send()
            .await
            .expect("request");
        assert_eq!(live.status(), 200);
        assert!(!live.headers().contains_key("ratelimit-limit"));
    }
}

#[tokio::test]
async fn junk_bearer_tokens_count_against_the_address() {
    let app = app_limiting_addresses().await;
    let org = app.create_tenant("acme").await;
    let ip = unique_ip();
    let junk = || {
        from(&app, &ip, "/v1/me")
            .header("x-tenant", org.slug.as_str())
            .bearer_auth("not.a.token")
            .send()
    };
    for _ in 0..3 {
        assert_problem(junk().await.expect("request"), 401, "invalid_token").await;
    }
    let refused = junk().await.expect("request");
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 429, "rate_limited").await;
}

#[tokio::test]
async fn each_user_has_a_limit_of_their_own() {
    let app = TestApp::builder()
        .env("rate_limit_user_per_second", "0")
        .env("rate_limit_user_per_minute", "6")
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let member = app.role_id(&org, "member").await;
    let (_, colleague) = app
        .user_with_roles(&org, "colleague@acme.example", &[member])
        .await;
    let (_, other) = app
        .user_with_roles(&org, "other@acme.example", &[member])
        .await;
    for n in 0..6 {
        let response = app.get_authed(&org.slug, "/v1/me", &colleague.access).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-limit"), 6);
        assert_eq!(header(&response, "ratelimit-remaining"), 5 - n);
    }
    let refused = app.get_authed(&org.slug, "/v1/me", &colleague.access).await;
    assert!((1..=10).contains(&header(&refused, "retry-after")));
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    let problem = assert_problem(refused, 429, "rate_limited").await;
    assert_eq!(problem["limit"], "user_per_minute");
    // Another user of the same tenant is not held back (the owner is not the one to ask:
    // setting the users up took some of their own requests), nor are public routes, which
    // count per address.
    let theirs = app.get_authed(&org.slug, "/v1/me", &other.access).await;
    assert_eq!(theirs.status(), 200);
    assert_eq!(header(&theirs, "ratelimit-remaining"), 5);
    let public = app.get_as(&org.slug, "/v1/tenant").await;
    assert_eq!(public.status(), 200);
}

#[tokio::test]
async fn a_revoked_token_is_told_401_even_over_its_limit() {
    let app = TestApp::builder()
        .env("rate_limit_user_per_second", "0")
        .env("rate_limit_user_per_minute", "2")
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let me = app
        .get_authed(&org.slug, "/v1/me", &org.tokens.access)
        .await;
    assert_eq!(me.status(), 200);
    let logout = app
        .authed(
            Method::POST,
            &org.slug,
            "/v1/auth/logout",
            &org.tokens.access,
        )
        .send()
        .await
        .expect("request");
    assert_eq!(logout.status(), 204);
    // Over the limit and revoked: the revocation is what the client needs to hear.
    let after = app
        .get_authed(&org.slug, "/v1/me", &org.tokens.access)
        .await;
    assert_problem(after, 401, "invalid_token").await;
}

#[tokio::test]
async fn an_authenticated_request_costs_one_redis_command() {
    let redis = PrivateRedis::start().await;
    let app = TestApp::builder()
        .env("redis_url", &redis.url)
        .env("plans", r#"[{"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "1 MiB", "requests_per_minute": 1000}}]"#)
        .spawn()
        .await;
    let org = app.signup("acme").await;
    // The revocation list is ready (as it is once any request has rebuilt it).
    app.state
        .revocations
        .rebuild(tenancy::TenantId(org.tenant_id))
        .await
        .expect("rebuild");
    // The listing needs `products:read`: the first request starts the tenant's cache
    // generation, the second stores the user's permissions under it.
    for _ in 0..2 {
        let warm = app
            .get_authed(&org.slug, "/v1/products", &org.tokens.access)
            .await;
        assert_eq!(warm.status(), 200);
    }
    redis.command(&["CONFIG", "RESETSTAT"]).await;
    for _ in 0..10 {
        let response = app
            .get_authed(&org.slug, "/v1/products", &org.tokens.access)
            .await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("ratelimit-remaining"));
    }
    let stats = match redis.command(&["INFO", "commandstats"]).await {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).expect("UTF-8"),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO answered {other:?}"),
    };
    let calls: BTreeMap<String, u64> = stats
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect();
    // Ten scripts, each reading the revocation and permission keys itself (its MGET, TIME,
    // GETs and SETs are counted by Redis too, but travel in the script) and judging the
    // user's two buckets and the plan's. Besides, bb8 checks a pooled connection with a
    // PING when it hands it out.
    assert_eq!(calls.get("evalsha"), Some(&10), "{calls:?}");
    assert_eq!(calls.get("mget"), Some(&10), "{calls:?}");
    assert_eq!(calls.get("get"), Some(&30), "{calls:?}");
    assert_eq!(calls.get("ping"), Some(&10), "{calls:?}");
    let outside_scripts: Vec<_> = calls
        .keys()
        .filter(|c| {
            ![
                "evalsha",
                "mget",
                "time",
                "get",
                "set",
                "ping",
                "config|resetstat",
            ]
            .contains(&c.as_str())
        })
        .collect();
    assert!(outside_scripts.is_empty(), "{calls:?}");
    drop(redis);
}

#[tokio::test]
async fn without_redis_the_limits_fail_open_under_the_process_cap() {
    let app = TestApp::builder()
        .env("redis_url", "redis://127.0.0.1:1")
        .env("rate_limit_fallback_per_second", "1")
        .spawn()
        .await;
    // Served while the cap allows, then refused: never all refused, never all let through.
    let mut served = 0;
    let mut refused = None;
    for _ in 0..20 {
        let response = app.get("/problems/not_found").await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("ratelimit-limit"));
        served += 1;
    }
    assert!(served >= 1, "fails open");
    let refused = refused.expect("the process cap holds");
    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, 429, "rate_limited").await;
    assert_eq!(problem["limit"], "process");
    let metrics = app.scrape_metrics().await.text().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"canopy_rate_limited_total{limit="process"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("canopy_rate_limit_fallbacks_total {}", served + 1)),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_auth_throttles_still_fail_closed_behind_the_open_limits() {
    let app = TestApp::builder()
        .env("redis_url", "redis://127.0.0.1:1")
        .spawn()
        .await;
    let org = app.create_tenant("acme").await;
    let response = app
        .post_as(
            org.slug.as_str(),
            "/v1/auth/login",
            &json!({"email": "a@acme.example", "password": PASSWORD}),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "dependency_unavailable").await;
}

#[tokio::test]
async fn the_limits_can_be_turned_off() {
    let app = TestApp::builder()
        .env("trusted_proxies", "127.0.0.1/32")
        .env("rate_limit_ip_per_minute", "1")
        .env("rate_limit_enabled", "false")
        .spawn()
        .await;
    let ip = unique_ip();
    for _ in 0..3 {
        let response = from(&app, &ip, "/problems/not_found")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("ratelimit-limit"));
    }
}
