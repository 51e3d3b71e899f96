//! The settings tests, moved with the loader from `api/src/settings.rs` unchanged.

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn readme_documents_every_setting() {
    let readme = include_str!("../../README.md");
    for setting in SETTINGS {
        let var = format!("| `{}` |", env_name(setting.key));
        assert!(
            readme.contains(&var),
            "README.md's configuration table lacks {var}"
        );
    }
}

#[test]
fn defaults_need_no_configuration() {
    let s = Settings::from_env_map(&BTreeMap::new()).expect("defaults are valid");
    assert_eq!(s.http.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(s.database.max_connections, 20);
    assert_eq!(s.http.body_limit, 1024 * 1024);
    assert_eq!(s.jwt.access_ttl, Duration::from_secs(900));
    assert_eq!(s.s3.bucket, "canopy");
    assert!(s.http.cors_origins.is_empty());
}

#[test]
fn invalid_value_names_the_variable_and_the_expectation() {
    let err = Settings::from_env_map(&env(&[("CANOPY_BIND", "nonsense")])).unwrap_err();
    let line = err.to_string();
    assert!(
        line.starts_with("CANOPY_BIND=\"nonsense\" is invalid"),
        "{line}"
    );
    assert!(line.contains("host:port"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn secrets_are_never_echoed() {
    let err = Settings::from_env_map(&env(&[("CANOPY_DATABASE_URL", "mysql://u:hunter2@h/db")]))
        .unwrap_err();
    let line = err.to_string();
    assert!(line.contains("CANOPY_DATABASE_URL"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
}

#[test]
fn production_requires_real_secrets_and_urls() {
    let prod = |extra: &[(&str, &str)]| {
        let mut vars = vec![("CANOPY_ENVIRONMENT", "production")];
        vars.extend_from_slice(extra);
        Settings::from_env_map(&env(&vars))
    };
    let err = prod(&[]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CANOPY_S3_SECRET_ACCESS_KEY is required"),
        "{err}"
    );
    assert!(prod(&[("CANOPY_S3_SECRET_ACCESS_KEY", DEFAULT_S3_SECRET_ACCESS_KEY)]).is_err());
    let s3 = ("CANOPY_S3_SECRET_ACCESS_KEY", "a-real-secret");
    let err = prod(&[s3]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CANOPY_STRIPE_SECRET_KEY is required"),
        "{err}"
    );
    assert!(prod(&[s3, ("CANOPY_STRIPE_SECRET_KEY", DEFAULT_STRIPE_SECRET_KEY)]).is_err());
    let key = ("CANOPY_STRIPE_SECRET_KEY", "sk_live_real");
    let err = prod(&[s3, key]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CANOPY_STRIPE_WEBHOOK_SECRETS is required"),
        "{err}"
    );
    let hooks = ("CANOPY_STRIPE_WEBHOOK_SECRETS", "whsec_real");
    let err = prod(&[s3, key, hooks]).unwrap_err();
    assert!(
        err.to_string().starts_with("CANOPY_SMTP_URL is required"),
        "{err}"
    );
    let smtp = ("CANOPY_SMTP_URL", "smtps://mailer:pw@mail.example:465");
    let err = prod(&[s3, key, hooks, smtp]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CANOPY_UNSUBSCRIBE_KEY is required"),
        "{err}"
    );
    assert!(
        prod(&[
            s3,
            key,
            hooks,
            smtp,
            ("CANOPY_UNSUBSCRIBE_KEY", crate::DEFAULT_UNSUBSCRIBE_KEY)
        ])
        .is_err()
    );
    let unsubscribe = (
        "CANOPY_UNSUBSCRIBE_KEY",
        "a-production-key-of-at-least-32-bytes",
    );
    let err = prod(&[s3, key, hooks, smtp, unsubscribe]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CANOPY_UNSUBSCRIBE_URL is required"),
        "{err}"
    );
    let unsubscribe_url = (
        "CANOPY_UNSUBSCRIBE_URL",
        "https://api.example/v1/email/unsubscribe",
    );
    let err = prod(&[s3, key, hooks, smtp, unsubscribe, unsubscribe_url]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CANOPY_SECRETS_KEY is required"),
        "{err}"
    );
    // The development key, as written in the README and in hex, is refused too.
    let dev_hex = "63616e6f70792d646576656c6f706d656e742d736563726574732d6b65792121";
    assert_eq!(
        parse_secrets_key(dev_hex),
        parse_secrets_key(DEFAULT_SECRETS_KEY)
    );
    for dev in [DEFAULT_SECRETS_KEY, dev_hex] {
        let err = prod(&[
            s3,
            key,
            hooks,
            smtp,
            unsubscribe,
            unsubscribe_url,
            ("CANOPY_SECRETS_KEY", dev),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CANOPY_SECRETS_KEY is required"),
            "{err}"
        );
    }
    let secrets = (
        "CANOPY_SECRETS_KEY",
        "q83vEjRWeJq8d3iUq83vEjRWeJq8d3iUq83vEjRWeJo=",
    );
    let err = prod(&[s3, key, hooks, smtp, unsubscribe, unsubscribe_url, secrets]).unwrap_err();
    assert!(
        err.to_string().starts_with("CANOPY_PUBLIC_URL is required"),
        "{err}"
    );
    assert!(
        prod(&[
            s3,
            key,
            hooks,
            smtp,
            unsubscribe,
            unsubscribe_url,
            secrets,
            ("CANOPY_PUBLIC_URL", "https://app.example")
        ])
        .is_ok()
    );
    let short = ("CANOPY_UNSUBSCRIBE_KEY", "too-short");
    assert!(Settings::from_env_map(&env(&[short])).is_err());
}

#[test]
fn secrets_key_is_32_bytes_of_base64_or_hex() {
    let defaults = Settings::from_env_map(&BTreeMap::new()).expect("defaults are valid");
    assert_eq!(defaults.secrets.key(), b"canopy-development-secrets-key!!");
    let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    let s = Settings::from_env_map(&env(&[("CANOPY_SECRETS_KEY", hex)])).expect("hex key");
    assert_eq!(s.secrets.key()[..4], [0x00, 0x11, 0x22, 0x33]);
    assert_eq!(s.secrets.key()[31], 0xff);
    let unpadded = "q83vEjRWeJq8d3iUq83vEjRWeJq8d3iUq83vEjRWeJo";
    assert!(Settings::from_env_map(&env(&[("CANOPY_SECRETS_KEY", unpadded)])).is_ok());
    for bad in [
        // 31 and 33 bytes, in base64 and hex; not base64; hex with a stray letter.
        "q83vEjRWeJq8d3iUq83vEjRWeJq8d3iUq83vEjRWeA==",
        "q83vEjRWeJq8d3iUq83vEjRWeJq8d3iUq83vEjRWeJqr",
        &hex[..62],
        &format!("{hex}00"),
        "not a key at all, not even close!!!!!!!!!!",
        &format!("{}g", &hex[..63]),
    ] {
        assert_eq!(parse_secrets_key(bad), None, "{bad}");
        let err = Settings::from_env_map(&env(&[("CANOPY_SECRETS_KEY", bad)])).unwrap_err();
        let line = err.to_string();
        assert!(line.starts_with("CANOPY_SECRETS_KEY"), "{line}");
        assert!(line.contains("32 bytes"), "{line}");
        assert!(!line.contains(bad), "the key is echoed: {line}");
    }
}

#[test]
fn sizes_durations_and_origins_parse() {
    let s = Settings::from_env_map(&env(&[
        ("CANOPY_BODY_LIMIT", "512KiB"),
        ("CANOPY_REQUEST_TIMEOUT", "1m 30s"),
        (
            "CANOPY_CORS_ORIGINS",
            "https://a.example, http://localhost:3000/",
        ),
        ("CANOPY_BASE_DOMAIN", "Canopy.Example"),
    ]))
    .expect("valid");
    assert_eq!(s.http.body_limit, 512 * 1024);
    assert_eq!(s.http.request_timeout, Duration::from_secs(90));
    assert_eq!(
        s.http.cors_origins,
        ["https://a.example", "http://localhost:3000"]
    );
    assert_eq!(s.http.base_domain.as_deref(), Some("canopy.example"));
    for (var, bad) in [
        ("CANOPY_BODY_LIMIT", "lots"),
        ("CANOPY_REQUEST_TIMEOUT", "0s"),
        ("CANOPY_CORS_ORIGINS", "*"),
        ("CANOPY_DATABASE_MAX_CONNECTIONS", "0"),
        ("CANOPY_S3_BUCKET", "Has_Upper"),
        ("CANOPY_LOG_FORMAT", "xml"),
    ] {
        let err = Settings::from_env_map(&env(&[(var, bad)])).expect_err(var);
        assert!(err.to_string().starts_with(var), "{err}");
    }
}

#[test]
fn edge_settings_parse_and_the_old_forwarded_for_switch_refuses_to_trust_any_peer() {
    let s = Settings::from_env_map(&BTreeMap::new()).expect("defaults");
    assert!(s.http.trusted_proxies.is_empty());
    assert_eq!(
        s.http.metrics_bind.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
    assert!(s.rate_limit.enabled);
    assert_eq!(
        (s.rate_limit.ip_per_second, s.rate_limit.ip_per_minute),
        (3, 100)
    );
    assert_eq!(
        (s.rate_limit.user_per_second, s.rate_limit.user_per_minute),
        (20, 600)
    );

    let s = Settings::from_env_map(&env(&[
        ("CANOPY_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1/32"),
        ("CANOPY_METRICS_BIND", "off"),
        ("CANOPY_RATE_LIMIT_ENABLED", "false"),
        ("CANOPY_RATE_LIMIT_IP_PER_SECOND", "0"),
    ]))
    .expect("valid");
    assert_eq!(
        s.http.trusted_proxies,
        TrustedProxies::parse("10.0.0.0/8,127.0.0.1").expect("valid")
    );
    assert_eq!(s.http.metrics_bind, None);
    assert!(!s.rate_limit.enabled);
    assert_eq!(s.rate_limit.ip_per_second, 0);

    // The old switch: `false` is accepted, `true` refuses to start and says what to
    // set instead, unless the list is set (which replaces it).
    let off = Settings::from_env_map(&env(&[("CANOPY_TRUST_FORWARDED_FOR", "false")])).expect("ok");
    assert!(off.http.trusted_proxies.is_empty());
    for value in ["true", "TRUE", "yes"] {
        let err = Settings::from_env_map(&env(&[("CANOPY_TRUST_FORWARDED_FOR", value)]))
            .expect_err(value)
            .to_string();
        assert!(
            err.starts_with(&format!("CANOPY_TRUST_FORWARDED_FOR={value:?} is invalid")),
            "{err}"
        );
        assert!(err.contains("CANOPY_TRUSTED_PROXIES"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
    let both = Settings::from_env_map(&env(&[
        ("CANOPY_TRUST_FORWARDED_FOR", "true"),
        ("CANOPY_TRUSTED_PROXIES", "10.0.0.1"),
    ]))
    .expect("ok");
    assert_eq!(
        both.http.trusted_proxies,
        TrustedProxies::parse("10.0.0.1").expect("valid")
    );

    for (var, bad) in [
        ("CANOPY_TRUSTED_PROXIES", "10.0.0.0/40"),
        ("CANOPY_TRUSTED_PROXIES", "proxy.internal"),
        ("CANOPY_METRICS_BIND", "9090"),
        ("CANOPY_RATE_LIMIT_USER_PER_MINUTE", "-1"),
        ("CANOPY_RATE_LIMIT_ENABLED", "maybe"),
    ] {
        let err = Settings::from_env_map(&env(&[(var, bad)])).expect_err(var);
        assert!(err.to_string().starts_with(var), "{err}");
    }
}

#[test]
fn file_values_apply_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("canopy-settings-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("canopy.toml");
    std::fs::write(&path, "bind = \"127.0.0.1:9000\"\ndatabase_max_connections = 7\ncors_origins = [\"https://x.example\"]\n")
        .expect("write");
    let s = Settings::from_sources(
        &env(&[("CANOPY_BIND", "127.0.0.1:9100")]),
        &read_file(&path).expect("parse"),
        Some(&path),
    )
    .expect("valid");
    assert_eq!(s.http.bind.port(), 9100);
    assert_eq!(s.database.max_connections, 7);
    assert_eq!(s.http.cors_origins, ["https://x.example"]);

    std::fs::write(&path, "databse_url = \"x\"\n").expect("write");
    let err = read_file(&path).unwrap_err().to_string();
    assert!(err.contains("unknown setting `databse_url`"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn retention_defaults_and_overrides() {
    let s = Settings::from_env_map(&BTreeMap::new()).expect("defaults are valid");
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(s.retention.sessions, 7 * day);
    assert_eq!(s.retention.email_tokens, 7 * day);
    assert_eq!(s.retention.invitations, 30 * day);
    assert_eq!(s.retention.succeeded_jobs, 7 * day);
    assert_eq!(s.retention.webhook_events, 90 * day);
    assert_eq!(s.retention.audit_events, 365 * day);
    assert_eq!(s.retention.prune_interval, Duration::from_secs(3600));
    assert_eq!(s.retention.prune_batch, 1000);
    let s = Settings::from_env_map(&env(&[
        ("CANOPY_RETAIN_SESSIONS", "2h"),
        ("CANOPY_RETAIN_AUDIT_EVENTS", "3650d"),
        ("CANOPY_PRUNE_INTERVAL", "1m"),
        ("CANOPY_PRUNE_BATCH", "2"),
    ]))
    .expect("valid");
    assert_eq!(s.retention.sessions, Duration::from_secs(7200));
    assert_eq!(s.retention.audit_events, 3650 * day);
    assert_eq!(s.retention.prune_interval, Duration::from_secs(60));
    assert_eq!(s.retention.prune_batch, 2);
}

#[test]
fn retention_out_of_range_names_the_variable() {
    for (var, value) in [
        ("CANOPY_RETAIN_SESSIONS", "59m"),
        ("CANOPY_RETAIN_EMAIL_TOKENS", "0s"),
        ("CANOPY_RETAIN_INVITATIONS", "3651d"),
        ("CANOPY_RETAIN_SUCCEEDED_JOBS", "soon"),
        ("CANOPY_RETAIN_WEBHOOK_EVENTS", "30m"),
        ("CANOPY_RETAIN_WEBHOOK_EVENTS", "3d"),
        ("CANOPY_RETAIN_AUDIT_EVENTS", "1s"),
        ("CANOPY_PRUNE_INTERVAL", "59s"),
        ("CANOPY_PRUNE_INTERVAL", "8d"),
        ("CANOPY_PRUNE_BATCH", "0"),
        ("CANOPY_PRUNE_BATCH", "100001"),
        ("CANOPY_PRUNE_BATCH", "-1"),
    ] {
        let err = Settings::from_env_map(&env(&[(var, value)])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{var}={value:?} is invalid")),
            "{var}={value}: {err}"
        );
    }
}
