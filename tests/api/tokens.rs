//! Access tokens under attack and under rotation: tokens forged the ways attackers forge JWTs
//! (no signature, HMAC keyed with the public key, another key, tampering, odd `kid`s, bad
//! claims) must all be refused, and key rotation and retirement must behave as documented
//! across instances sharing one database.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use e2e::{
    TestApp, assert_problem,
    auth::{PASSWORD, Signup},
    spawn_app,
};
use identity::{KeyError, jwt};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use uuid::Uuid;

/// DER prefix of an unencrypted PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A key the app has never seen: RFC 8032, section 7.1, test 1. A published test vector, so
/// the forged token below is a genuine Ed25519 signature that provably verifies under it.
const FOREIGN_SEED: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];
const FOREIGN_PUBLIC: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

/// Further than [`identity::jwt::LEEWAY`] (30 s) from now, and well within it.
const BEYOND_LEEWAY: i64 = 120;
const WITHIN_LEEWAY: i64 = 5;

/// The newest active signing key, as stored in the control plane.
struct StoredKey {
    kid: String,
    private: Vec<u8>,
    public: Vec<u8>,
}

async fn current_key(app: &TestApp) -> StoredKey {
    let (kid, private, public) = sqlx::query_as::<_, (String, Vec<u8>, Vec<u8>)>(
        "select kid, private_key, public_key from public.signing_keys
         where retired_at is null order by created_at desc, kid limit 1",
    )
    .fetch_one(app.state.db.pool())
    .await
    .expect("an active signing key");
    StoredKey {
        kid,
        private,
        public,
    }
}

/// Signs `claims` under `header` with `key`.
fn mint(claims: &Value, header: &Header, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("the token encodes")
}

/// The header the app writes: EdDSA, `at+jwt`, and `kid` if any.
fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".to_owned());
    header.kid = kid.map(str::to_owned);
    header
}

/// One JWT segment: base64url of the JSON text.
fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn now() -> i64 {
    Utc::now().timestamp()
}

/// The `kid` header of `token`.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("a kid")
}

/// `GET /.well-known/jwks.json`: the published keys, in order.
async fn jwks(app: &TestApp) -> Vec<Value> {
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    body["keys"].as_array().expect("a keys array").clone()
}

async fn jwks_kids(app: &TestApp) -> Vec<String> {
    jwks(app)
        .await
        .iter()
        .map(|k| k["kid"].as_str().expect("a kid").to_owned())
        .collect()
}

/// `GET /v1/me` of tenant `org` with `token` on `app`; asserts 200 as `org`'s owner.
async fn assert_me(app: &TestApp, org: &Signup, token: &str) {
    let response = app.get_authed(&org.slug, "/v1/me", token).await;
    assert_eq!(response.status(), 200, "token refused: {token}");
    let me: Value = response.json().await.expect("JSON");
    assert_eq!(me["id"], org.owner_id.to_string());
}

/// An app with tenant `acme`, its signing key and its owner's access claims: everything an
/// attacker who read the key table (or only the JWKS) would forge tokens with.
struct Forge {
    app: TestApp,
    org: Signup,
    key: StoredKey,
    claims: Value,
}

impl Forge {
    async fn new() -> Self {
        let app = spawn_app().await;
        let org = app.signup("acme").await;
        let key = current_key(&app).await;
        let claims = app
            .state
            .tokens
            .verify(&org.tokens.access)
            .await
            .expect("the issued token verifies");
        let claims = serde_json::to_value(claims).expect("claims serialize");
        Self {
            app,
            org,
            key,
            claims,
        }
    }

    /// The owner's claims with `changes` merged in; a `null` removes the claim.
    fn claims_with(&self, changes: Value) -> Value {
        let mut claims = self.claims.clone();
        let object = claims.as_object_mut().expect("claims are an object");
        for (name, value) in changes.as_object().expect("changes are an object") {
            match value {
                Value::Null => object.remove(name),
                value => object.insert(name.clone(), value.clone()),
            };
        }
        claims
    }

    /// `header` with the stored key's `kid`.
    fn header(&self, alg: Algorithm) -> Header {
        header(alg, Some(&self.key.kid))
    }

    /// `claims` signed by the app's current key under the app's header.
    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(claims, &self.header(Algorithm::EdDSA))
    }

    fn sign_with_header(&self, claims: &Value, header: &Header) -> String {
        mint(claims, header, &EncodingKey::from_ed_der(&self.key.private))
    }

    async fn assert_accepted(&self, token: &str) {
        assert_me(&self.app, &self.org, token).await;
    }

    async fn assert_refused(&self, token: &str, code: &str) {
        let response = self.app.get_authed(&self.org.slug, "/v1/me", token).await;
        assert_problem(response, 401, code).await;
    }
}

#[tokio::test]
async fn a_token_minted_with_the_stored_key_and_correct_claims_is_accepted() {
    let forge = Forge::new().await;
    let claims = forge.claims_with(json!({
        "jti": Uuid::new_v4(),
        "iat": now(),
        "nbf": now(),
        "exp": now() + 300,
    }));
    let token = forge.sign(&claims);
    assert_ne!(token, forge.org.tokens.access);
    forge.assert_accepted(&token).await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let forge = Forge::new().await;
    for alg in ["none", "None", "NONE"] {
        let header = json!({ "alg": alg, "typ": "at+jwt", "kid": forge.key.kid });
        let token = format!("{}.{}.", segment(&header), segment(&forge.claims));
        forge.assert_refused(&token, "invalid_token").await;
    }
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused() {
    let forge = Forge::new().await;
    // The attacker's view of the key: the JWKS, which must be exactly the stored public key.
    let x = URL_SAFE_NO_PAD.encode(&forge.key.public);
    assert_eq!(
        jwks(&forge.app).await,
        [json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": forge.key.kid,
            "use": "sig", "alg": "EdDSA",
        })]
    );
    for secret in [forge.key.public.as_slice(), x.as_bytes()] {
        let token = mint(
            &forge.claims,
            &forge.header(Algorithm::HS256),
            &EncodingKey::from_secret(secret),
        );
        forge.assert_refused(&token, "invalid_token").await;
    }
}

#[tokio::test]
async fn a_token_signed_by_another_ed25519_key_is_refused() {
    let forge = Forge::new().await;
    let foreign = [PKCS8_V1_ED25519_PREFIX.as_slice(), &FOREIGN_SEED].concat();
    let token = mint(
        &forge.claims,
        &forge.header(Algorithm::EdDSA),
        &EncodingKey::from_ed_der(&foreign),
    );
    // A well-formed, validly signed EdDSA token: only the key is wrong.
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["canopy"]);
    jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_ed_der(&FOREIGN_PUBLIC),
        &validation,
    )
    .expect("the forged token verifies under the foreign key");
    forge.assert_refused(&token, "invalid_token").await;
}

#[tokio::test]
async fn a_token_altered_after_signing_is_refused() {
    let forge = Forge::new().await;
    // Stretching the lifetime to ten years: claims the app accepts when it signs them itself.
    let extended = forge.claims_with(json!({ "exp": now() + 10 * 365 * 86_400 }));
    forge.assert_accepted(&forge.sign(&extended)).await;

    let token = forge.sign(&forge.claims);
    forge.assert_accepted(&token).await;
    let [head, _, signature] = token.split('.').collect::<Vec<_>>()[..] else {
        panic!("a JWT has three segments: {token}");
    };
    let tampered = format!("{head}.{}.{signature}", segment(&extended));
    forge.assert_refused(&tampered, "invalid_token").await;

    let mut bytes = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    bytes[0] ^= 0x01;
    let payload = segment(&forge.claims);
    let flipped = format!("{head}.{payload}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    forge.assert_refused(&flipped, "invalid_token").await;
}

#[tokio::test]
async fn tokens_with_an_unknown_absurd_path_like_or_missing_kid_are_refused() {
    let forge = Forge::new().await;
    let absurd = "k".repeat(4096);
    for kid in [
        Some("AAAAAAAAAAAAAAAA"),
        Some(absurd.as_str()),
        Some("../../etc/passwd"),
        Some(""),
        None,
    ] {
        let token = forge.sign_with_header(&forge.claims, &header(Algorithm::EdDSA, kid));
        forge.assert_refused(&token, "invalid_token").await;
    }
    // The refusals left the real key alone.
    forge.assert_accepted(&forge.sign(&forge.claims)).await;
}

#[tokio::test]
async fn a_token_expired_beyond_the_leeway_is_refused_as_expired() {
    let forge = Forge::new().await;
    let issued = now() - 1_000;
    let expired_at =
        |exp: i64| forge.claims_with(json!({ "iat": issued, "nbf": issued, "exp": exp }));
    forge
        .assert_accepted(&forge.sign(&expired_at(now() - WITHIN_LEEWAY)))
        .await;
    forge
        .assert_refused(
            &forge.sign(&expired_at(now() - BEYOND_LEEWAY)),
            "token_expired",
        )
        .await;
}

#[tokio::test]
async fn a_token_not_yet_valid_beyond_the_leeway_is_refused() {
    let forge = Forge::new().await;
    let valid_from = |nbf: i64| forge.claims_with(json!({ "nbf": nbf }));
    forge
        .assert_accepted(&forge.sign(&valid_from(now() + WITHIN_LEEWAY)))
        .await;
    forge
        .assert_refused(
            &forge.sign(&valid_from(now() + BEYOND_LEEWAY)),
            "invalid_token",
        )
        .await;
}

#[tokio::test]
async fn a_token_issued_in_the_future_beyond_the_leeway_is_refused() {
    let forge = Forge::new().await;
    let issued_at = |iat: i64| forge.claims_with(json!({ "iat": iat }));
    forge
        .assert_accepted(&forge.sign(&issued_at(now() + WITHIN_LEEWAY)))
        .await;
    forge
        .assert_refused(
            &forge.sign(&issued_at(now() + BEYOND_LEEWAY)),
            "invalid_token",
        )
        .await;
}

#[tokio::test]
async fn a_token_for_another_issuer_audience_or_type_is_refused() {
    let forge = Forge::new().await;
    for change in [
        json!({ "iss": "evil" }),
        json!({ "aud": "other-service" }),
        json!({ "typ": "refresh" }),
    ] {
        let token = forge.sign(&forge.claims_with(change));
        forge.assert_refused(&token, "invalid_token").await;
    }
}

#[tokio::test]
async fn a_token_missing_a_required_claim_is_refused() {
    let forge = Forge::new().await;
    for claim in ["exp", "nbf", "iat", "iss", "aud", "sub", "typ"] {
        let token = forge.sign(&forge.claims_with(json!({ claim: null })));
        forge.assert_refused(&token, "invalid_token").await;
    }
}

#[tokio::test]
async fn a_token_of_one_tenant_is_forbidden_on_another() {
    let app = spawn_app().await;
    let acme = app.signup("acme").await;
    let bravo = app.signup("bravo").await;
    for tenant in [bravo.slug.clone(), bravo.tenant_id.to_string()] {
        let response = app.get_authed(&tenant, "/v1/me", &acme.tokens.access).await;
        assert_problem(response, 403, "wrong_tenant").await;
    }
    assert_me(&app, &acme, &acme.tokens.access).await;
    assert_me(&app, &bravo, &bravo.tokens.access).await;
}

#[tokio::test]
async fn rotated_keys_sign_new_tokens_verify_old_ones_until_retired_and_reach_siblings() {
    let app = spawn_app().await;
    let pool = app.state.db.pool();
    let org = app.signup("acme").await;
    let t1 = org.tokens.access.clone();
    let k1 = kid_of(&t1);
    assert_eq!(k1, current_key(&app).await.kid);
    // Started before the rotation, and never told to reload.
    let sibling = app.spawn_sibling().await;
    assert_eq!(jwks_kids(&sibling).await, [k1.as_str()]);

    let k2 = jwt::rotate_key(pool).await.expect("rotate");
    assert_ne!(k2, k1);
    app.state.tokens.reload().await.expect("reload");
    let t2 = app
        .login_ok(&org.slug, &org.owner_email, PASSWORD)
        .await
        .access;
    assert_eq!(kid_of(&t2), k2);
    assert_me(&app, &org, &t1).await;
    assert_me(&app, &org, &t2).await;
    assert_eq!(jwks_kids(&app).await, [k2.as_str(), k1.as_str()]);

    assert_eq!(jwks_kids(&sibling).await, [k1.as_str()]);
    assert_me(&sibling, &org, &t2).await;
    assert_eq!(jwks_kids(&sibling).await, [k2.as_str(), k1.as_str()]);
    assert_me(&sibling, &org, &t1).await;

    assert!(jwt::retire_key(pool, &k1).await.expect("retire"));
    app.state.tokens.reload().await.expect("reload");
    let refused = app.get_authed(&org.slug, "/v1/me", &t1).await;
    assert_problem(refused, 401, "invalid_token").await;
    assert_me(&app, &org, &t2).await;
    assert_eq!(jwks_kids(&app).await, [k2.as_str()]);

    let last = jwt::retire_key(pool, &k2).await;
    assert!(matches!(last, Err(KeyError::Unusable(_))), "{last:?}");
    let keys = jwt::list_keys(pool).await.expect("list keys");
    let retired: Vec<(String, bool)> = keys
        .into_iter()
        .map(|k| (k.kid, k.retired_at.is_some()))
        .collect();
    assert_eq!(retired, [(k2.clone(), false), (k1, true)]);
    let t3 = app
        .login_ok(&org.slug, &org.owner_email, PASSWORD)
        .await
        .access;
    assert_eq!(kid_of(&t3), k2);
    assert_me(&app, &org, &t3).await;
}

#[tokio::test]
async fn concurrent_first_uses_of_a_new_key_on_a_sibling_all_succeed() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let sibling = app.spawn_sibling().await;
    jwt::rotate_key(app.state.db.pool()).await.expect("rotate");
    app.state.tokens.reload().await.expect("reload");
    let t2 = app
        .login_ok(&org.slug, &org.owner_email, PASSWORD)
        .await
        .access;
    let requests = (0..20).map(|_| sibling.get_authed(&org.slug, "/v1/me", &t2));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
}
