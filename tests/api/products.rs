//! The product catalog: CRUD with entity tags, SKU uniqueness per tenant, atomic stock,
//! keyset pagination under concurrent inserts, filters and search, soft delete and restore,
//! validation, and permissions.

use std::collections::{BTreeMap, BTreeSet};

use e2e::{TestApp, assert_problem, auth::Signup, spawn_app};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

fn product(name: &str, price: i64) -> Value {
    json!({"name": name, "price": price, "currency": "USD"})
}

async fn send(
    app: &TestApp,
    org: &Signup,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = app.authed(method, &org.slug, path, &org.tokens.access);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("request failed")
}

fn etag(response: &Response) -> String {
    response.headers()["etag"]
        .to_str()
        .expect("ASCII ETag")
        .to_owned()
}

async fn list(app: &TestApp, org: &Signup, query: &str) -> Value {
    let response = app
        .get_authed(
            &org.slug,
            &format!("/v1/products?{query}"),
            &org.tokens.access,
        )
        .await;
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.expect("JSON")
}

fn skus(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["sku"].as_str().expect("sku").to_owned())
        .collect()
}

#[tokio::test]
async fn a_product_round_trips_with_entity_tags() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let response = app
        .create_product(
            "acme",
            &org.tokens.access,
            &json!({
                "name": "  Trail Shoe ",
                "description": "Grippy.\nLight.",
                "price": 12_999,
                "compare_at_price": 15_000,
                "currency": "EUR",
                "status": "active",
                "type": "physical",
                "stock_quantity": 4,
                "low_stock_threshold": 5,
                "attributes": {"colour": "red", "sizes": [40, 41]},
                "tags": ["shoes", "trail", "shoes"],
            }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let tag = etag(&response);
    assert_eq!(tag, "\"1\"");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/products/{id}"));
    assert_eq!(created["name"], "Trail Shoe");
    assert!(created["sku"].as_str().unwrap().starts_with("SKU-"));
    assert_eq!(created["price"], 12_999);
    assert_eq!(created["compare_at_price"], 15_000);
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["type"], "physical");
    assert_eq!(created["low_stock"], true);
    assert_eq!(created["attributes"]["sizes"], json!([40, 41]));
    assert_eq!(created["tags"], json!(["shoes", "trail"]));
    assert_eq!(created["version"], 1);

    let path = format!("/v1/products/{id}");
    let fetched = send(&app, &org, Method::GET, &path, None, &[]).await;
    assert_eq!(etag(&fetched), tag);
    assert_eq!(fetched.json::<Value>().await.unwrap(), created);
    let unchanged = send(
        &app,
        &org,
        Method::GET,
        &path,
        None,
        &[("if-none-match", &tag)],
    )
    .await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(etag(&unchanged), tag);

    let patch = json!({"price": 9_999, "compare_at_price": null, "tags": ["sale"]});
    let changed = send(
        &app,
        &org,
        Method::PATCH,
        &path,
        Some(&patch),
        &[("if-match", &tag)],
    )
    .await;
    assert_eq!(changed.status(), 200);
    let new_tag = etag(&changed);
    assert_eq!(new_tag, "\"2\"");
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["price"], 9_999);
    assert_eq!(changed["compare_at_price"], Value::Null);
    assert_eq!(changed["tags"], json!(["sale"]));
    assert_eq!(changed["name"], "Trail Shoe");
    // The old copy is stale now: for reads and for writes.
    let stale = send(
        &app,
        &org,
        Method::GET,
        &path,
        None,
        &[("if-none-match", &tag)],
    )
    .await;
    assert_eq!(stale.status(), 200);
    let problem = assert_problem(
        send(
            &app,
            &org,
            Method::PATCH,
            &path,
            Some(&json!({"name": "Lost update"})),
            &[("if-match", &tag)],
        )
        .await,
        412,
        "precondition_failed",
    )
    .await;
    assert_eq!(problem["current_version"], 2);
    assert_problem(
        send(
            &app,
            &org,
            Method::DELETE,
            &path,
            None,
            &[("if-match", &tag)],
        )
        .await,
        412,
        "precondition_failed",
    )
    .await;
    assert_problem(
        send(
            &app,
            &org,
            Method::PATCH,
            &path,
            Some(&json!({"name": "x"})),
            &[("if-match", "garbage")],
        )
        .await,
        412,
        "precondition_failed",
    )
    .await;
    // A weak tag never matches for If-Match (strong comparison); a tag we did not issue in
    // If-None-Match is simply not a match.
    let weak = format!("W/{new_tag}");
    assert_problem(
        send(
            &app,
            &org,
            Method::DELETE,
            &path,
            None,
            &[("if-match", &weak)],
        )
        .await,
        412,
        "precondition_failed",
    )
    .await;
    let foreign = send(
        &app,
        &org,
        Method::GET,
        &path,
        None,
        &[("if-none-match", "xyz")],
    )
    .await;
    assert_eq!(foreign.status(), 200);

    // Soft delete: gone from reads and listings unless asked for, then restored.
    let deleted = send(
        &app,
        &org,
        Method::DELETE,
        &path,
        None,
        &[("if-match", &new_tag)],
    )
    .await;
    assert_eq!(deleted.status(), 204);
    assert_problem(
        send(&app, &org, Method::GET, &path, None, &[]).await,
        404,
        "not_found",
    )
    .await;
    let with_deleted = send(
        &app,
        &org,
        Method::GET,
        &format!("{path}?include_deleted=true"),
        None,
        &[],
    )
    .await;
    assert!(with_deleted.json::<Value>().await.unwrap()["deleted_at"].is_string());
    assert!(skus(&list(&app, &org, "").await).is_empty());
    assert_eq!(
        skus(&list(&app, &org, "include_deleted=true").await).len(),
        1
    );
    let restored = send(
        &app,
        &org,
        Method::POST,
        &format!("{path}/restore"),
        None,
        &[],
    )
    .await;
    assert_eq!(restored.status(), 200);
    let restored: Value = restored.json().await.unwrap();
    assert_eq!(restored["deleted_at"], Value::Null);
    assert_eq!(restored["version"], 4);
    assert_eq!(
        send(&app, &org, Method::GET, &path, None, &[])
            .await
            .status(),
        200
    );
    // A product of another tenant is not here.
    let other = app.signup("other").await;
    assert_problem(
        app.get_authed("other", &path, &other.tokens.access).await,
        404,
        "not_found",
    )
    .await;
    assert_problem(
        app.send_authed(Method::DELETE, "other", &path, &other.tokens.access, None)
            .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn skus_are_unique_within_a_tenant_only() {
    let app = spawn_app().await;
    let acme = app.signup("acme").await;
    let other = app.signup("other").await;
    let mut body = product("Mug", 500);
    body["sku"] = json!("MUG-1");
    let first = app.create_product_ok(&acme, &body).await;
    app.create_product_ok(&other, &body).await;
    body["sku"] = json!("mug-1");
    assert_problem(
        app.create_product("acme", &acme.tokens.access, &body).await,
        409,
        "sku_taken",
    )
    .await;
    // Renaming another product onto it, likewise.
    let second = app.create_product_ok(&acme, &product("Cup", 400)).await;
    assert_problem(
        send(
            &app,
            &acme,
            Method::PATCH,
            &format!("/v1/products/{}", second["id"].as_str().unwrap()),
            Some(&json!({"sku": "Mug-1"})),
            &[],
        )
        .await,
        409,
        "sku_taken",
    )
    .await;
    // A deleted product frees its SKU; restoring it while the SKU is in use again fails.
    let first_path = format!("/v1/products/{}", first["id"].as_str().unwrap());
    assert_eq!(
        send(&app, &acme, Method::DELETE, &first_path, None, &[])
            .await
            .status(),
        204
    );
    app.create_product_ok(&acme, &body).await;
    assert_problem(
        send(
            &app,
            &acme,
            Method::POST,
            &format!("{first_path}/restore"),
            None,
            &[],
        )
        .await,
        409,
        "sku_taken",
    )
    .await;
}

#[tokio::test]
async fn concurrent_stock_decrements_end_exactly_at_zero() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let mut body = product("Limited", 100);
    body["stock_quantity"] = json!(30);
    let created = app.create_product_ok(&org, &body).await;
    let path = format!("/v1/products/{}/stock", created["id"].as_str().unwrap());
    let decrement = json!({"delta": -1});
    let decrements = (0..50).map(|_| {
        app.send_authed(
            Method::POST,
            "acme",
            &path,
            &org.tokens.access,
            Some(&decrement),
        )
    });
    let responses = futures_util::future::join_all(decrements).await;
    let mut statuses = BTreeMap::new();
    for response in responses {
        let status = response.status().as_u16();
        if status == 409 {
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "insufficient_stock");
            assert_eq!(problem["available"], 0);
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 30), (409, 20)]));
    let now: Value = app
        .get_authed(
            "acme",
            &format!("/v1/products/{}", created["id"].as_str().unwrap()),
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now["stock_quantity"], 0);
    assert_eq!(now["version"], 31);
    // A restock then works, a zero or absurd delta is invalid.
    let restocked: Value = app
        .send_authed(
            Method::POST,
            "acme",
            &path,
            &org.tokens.access,
            Some(&json!({"delta": 5})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(restocked["stock_quantity"], 5);
    for delta in [0, 2_000_000_000, i64::MIN, 999_999_996] {
        assert_problem(
            app.send_authed(
                Method::POST,
                "acme",
                &path,
                &org.tokens.access,
                Some(&json!({"delta": delta})),
            )
            .await,
            422,
            "validation_failed",
        )
        .await;
    }
}

#[tokio::test]
async fn a_walk_sees_every_product_once_while_others_are_added() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let items: Vec<Value> = (0..60)
        .map(|n| {
            let mut p = product(&format!("Item {n:02}"), 1000 - n);
            p["sku"] = json!(format!("OLD-{n:02}"));
            p
        })
        .collect();
    assert_eq!(app.bulk_create(&org, &items).await.status(), 201);
    let existing: BTreeSet<String> = (0..60).map(|n| format!("OLD-{n:02}")).collect();

    for query in [
        "sort=created_at",
        "sort=created_at&order=desc",
        "sort=name",
        "sort=price&order=desc",
        "sort=updated_at",
    ] {
        // Another client keeps adding products while the walk goes on.
        let writer = {
            let client = app.client.clone();
            let url = format!("{}/v1/products", app.address);
            let access = org.tokens.access.clone();
            let prefix = query.replace(['=', '&'], "-");
            tokio::spawn(async move {
                for n in 0..20 {
                    let response = client
                        .post(&url)
                        .header("x-tenant", "acme")
                        .bearer_auth(&access)
                        .json(&json!({"name": format!("New {n}"), "price": 1, "currency": "USD", "sku": format!("NEW-{prefix}-{n}")}))
                        .send()
                        .await
                        .expect("request failed");
                    assert_eq!(response.status(), 201);
                }
            })
        };
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("{query}&limit=7");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let page = list(&app, &org, &q).await;
            seen.extend(skus(&page));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        writer.await.unwrap();
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{query}: a product was seen twice"
        );
        let old: BTreeSet<String> = seen
            .iter()
            .filter(|s| s.starts_with("OLD-"))
            .cloned()
            .collect();
        assert_eq!(old, existing, "{query}: every product that existed is seen");
        // Every sort orders the old products like their SKUs: they share one creation
        // instant (so the id breaks the tie), names follow the SKUs, and prices fall as
        // the SKUs rise.
        let olds: Vec<&String> = seen.iter().filter(|s| s.starts_with("OLD-")).collect();
        let mut expected = olds.clone();
        expected.sort();
        if query == "sort=created_at&order=desc" {
            expected.reverse();
        }
        assert_eq!(olds, expected, "{query}: order");
    }
    // A cursor belongs to its sort and order.
    let page = list(&app, &org, "sort=name&limit=2").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    for bad in [
        format!("sort=price&cursor={cursor}"),
        "cursor=garbage".to_owned(),
    ] {
        assert_problem(
            app.get_authed("acme", &format!("/v1/products?{bad}"), &org.tokens.access)
                .await,
            400,
            "invalid_parameter",
        )
        .await;
    }
}

#[tokio::test]
async fn filters_and_search_narrow_the_listing() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let specs = [
        json!({"sku": "RUN-1", "name": "Running shoes", "description": "Light trainers for the road", "price": 8000, "currency": "USD", "status": "active", "tags": ["shoes"], "stock_quantity": 2, "low_stock_threshold": 3}),
        json!({"sku": "HIKE-1", "name": "Hiking boot", "description": "Waterproof leather", "price": 15000, "currency": "USD", "status": "active", "tags": ["shoes", "outdoor"], "stock_quantity": 50, "low_stock_threshold": 3}),
        json!({"sku": "EBOOK-7", "name": "Trail guide", "description": "A book about running trails", "price": 1500, "currency": "EUR", "type": "digital", "tags": ["books"]}),
        json!({"sku": "FIT-30", "name": "Coaching", "description": "Thirty minutes", "price": 5000, "currency": "USD", "type": "service", "status": "archived"}),
    ];
    for spec in &specs {
        app.create_product_ok(&org, spec).await;
    }
    let cases = [
        ("status=active", vec!["RUN-1", "HIKE-1"]),
        ("type=digital", vec!["EBOOK-7"]),
        ("tag=shoes", vec!["RUN-1", "HIKE-1"]),
        ("tag=outdoor", vec!["HIKE-1"]),
        ("min_price=5000&max_price=10000", vec!["RUN-1", "FIT-30"]),
        ("currency=EUR", vec!["EBOOK-7"]),
        ("low_stock=true&status=active", vec!["RUN-1"]),
        ("low_stock=false", vec!["HIKE-1"]),
        // Stemming: "run" finds "Running" and "running".
        ("q=run", vec!["RUN-1", "EBOOK-7"]),
        ("q=waterproof%20boots", vec!["HIKE-1"]),
        ("q=%22running%20trails%22", vec!["EBOOK-7"]),
        ("q=running%20-book", vec!["RUN-1"]),
        ("q=HIKE-1", vec!["HIKE-1"]),
        ("q=nothing-matches-this", vec![]),
        (
            "updated_since=2000-01-01T00:00:00Z&type=service",
            vec!["FIT-30"],
        ),
        ("updated_since=2999-01-01T00:00:00Z", vec![]),
    ];
    for (query, expected) in cases {
        assert_eq!(skus(&list(&app, &org, query).await), expected, "{query}");
    }
    for bad in [
        "status=gone",
        "limit=101",
        "limit=0",
        "min_price=-1",
        "currency=usd",
        "updated_since=yesterday",
    ] {
        assert_problem(
            app.get_authed("acme", &format!("/v1/products?{bad}"), &org.tokens.access)
                .await,
            400,
            "invalid_parameter",
        )
        .await;
    }
}

#[tokio::test]
async fn bad_input_names_every_failing_field() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let problem = assert_problem(
        app.create_product(
            "acme",
            &org.tokens.access,
            &json!({
                "sku": "-bad sku",
                "name": "",
                "description": "x".repeat(5001),
                "price": -1,
                "compare_at_price": -5,
                "currency": "XXY",
                "stock_quantity": -3,
                "attributes": {"": 1},
                "tags": ["ok", " ", "t".repeat(51)],
                "image_ids": (0..11).map(|_| Uuid::new_v4()).collect::<Vec<_>>(),
            }),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "sku",
            "name",
            "description",
            "price",
            "compare_at_price",
            "compare_at_price",
            "currency",
            "stock_quantity",
            "attributes",
            "tags[1]",
            "tags[2]",
            "image_ids"
        ]
    );
    for body in [
        json!({"name": "x", "price": 1, "currency": "USD", "colour": "red"}),
        json!({"name": "x", "price": "1", "currency": "USD"}),
        json!({"name": "x", "currency": "USD"}),
        json!({"name": "x", "price": 1, "currency": "USD", "status": "sold"}),
        json!({"name": "x", "price": 1, "currency": "USD", "attributes": [1, 2]}),
        json!({"name": "x", "price": 100, "compare_at_price": 99, "currency": "USD"}),
    ] {
        assert_problem(
            app.create_product("acme", &org.tokens.access, &body).await,
            422,
            "validation_failed",
        )
        .await;
    }
    // A change that would put the compare-at price below the stored price.
    let created = app
        .create_product_ok(
            &org,
            &json!({"name": "x", "price": 100, "compare_at_price": 150, "currency": "USD"}),
        )
        .await;
    let problem = assert_problem(
        send(
            &app,
            &org,
            Method::PATCH,
            &format!("/v1/products/{}", created["id"].as_str().unwrap()),
            Some(&json!({"price": 200})),
            &[],
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "compare_at_price");
    assert!(skus(&list(&app, &org, "").await).len() == 1);
}

#[tokio::test]
async fn bulk_creation_is_all_or_nothing() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let mut items: Vec<Value> = (0..5).map(|n| product(&format!("P{n}"), 100 + n)).collect();
    items[1]["price"] = json!(-1);
    items[3]["sku"] = json!("DUP");
    items[4]["sku"] = json!("dup");
    let problem = assert_problem(
        app.bulk_create(&org, &items).await,
        422,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["items[1].price", "items[4].sku"]);
    assert!(skus(&list(&app, &org, "include_deleted=true").await).is_empty());

    // A SKU in use already: 409 naming the item, nothing created.
    let mut taken = product("Existing", 1);
    taken["sku"] = json!("TAKEN");
    app.create_product_ok(&org, &taken).await;
    let mut items: Vec<Value> = (0..3).map(|n| product(&format!("Q{n}"), 1)).collect();
    items[2]["sku"] = json!("taken");
    let problem = assert_problem(app.bulk_create(&org, &items).await, 409, "sku_taken").await;
    assert_eq!(problem["errors"][0]["field"], "items[2].sku");
    assert_eq!(skus(&list(&app, &org, "").await), ["TAKEN"]);

    // 1,000 at once is fine, in order; 1,001 is not.
    let items: Vec<Value> = (0..1000).map(|n| json!({"name": format!("B{n}"), "price": n, "currency": "JPY", "sku": format!("B-{n:04}")})).collect();
    let response = app.bulk_create(&org, &items).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let created_skus: Vec<&str> = created["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..1000).map(|n| format!("B-{n:04}")).collect();
    assert_eq!(created_skus, expected);
    let too_many: Vec<Value> = (0..1001)
        .map(|n| json!({"name": "x", "price": n, "currency": "JPY"}))
        .collect();
    assert_problem(
        app.bulk_create(&org, &too_many).await,
        422,
        "validation_failed",
    )
    .await;
    assert_problem(app.bulk_create(&org, &[]).await, 422, "validation_failed").await;
}

#[tokio::test]
async fn nul_characters_and_control_characters_are_client_errors() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    for attributes in [
        json!({"a": "x\u{0}y"}),
        json!({"a": {"b": ["\u{0}"]}}),
        json!({"a\u{0}": 1}),
    ] {
        let mut body = product("Nul", 1);
        body["attributes"] = attributes;
        assert_problem(
            app.create_product("acme", &org.tokens.access, &body).await,
            422,
            "validation_failed",
        )
        .await;
    }
    assert_problem(
        app.create_product("acme", &org.tokens.access, &product("a\u{0}b", 1))
            .await,
        422,
        "validation_failed",
    )
    .await;
    for query in ["q=a%00b", "tag=a%00b"] {
        assert_problem(
            app.get_authed("acme", &format!("/v1/products?{query}"), &org.tokens.access)
                .await,
            400,
            "invalid_parameter",
        )
        .await;
    }
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_write() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let created = app.create_product_ok(&org, &product("Lamp", 2500)).await;
    let viewer = app.role_id(&org, "viewer").await;
    let (_, tokens) = app.user_with_roles(&org, "v@acme.example", &[viewer]).await;
    let path = format!("/v1/products/{}", created["id"].as_str().unwrap());
    assert_eq!(
        app.get_authed("acme", &path, &tokens.access).await.status(),
        200
    );
    let problem = assert_problem(
        app.create_product("acme", &tokens.access, &product("Nope", 1))
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(problem["permission"], "products:write");
    for (method, path, body) in [
        (Method::PATCH, path.clone(), Some(json!({"name": "Nope"}))),
        (
            Method::POST,
            format!("{path}/stock"),
            Some(json!({"delta": -1})),
        ),
        (Method::DELETE, path.clone(), None),
    ] {
        assert_problem(
            app.send_authed(method, "acme", &path, &tokens.access, body.as_ref())
                .await,
            403,
            "forbidden",
        )
        .await;
    }
    let unchanged: Value = app
        .get_authed("acme", &path, &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["version"], 1);
}
