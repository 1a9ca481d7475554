//! Authentication and method routing.

use super::*;

// ---- auth -----------------------------------------------------------------

#[test]
fn api_key_from_headers_variants() {
    assert_eq!(api_key_from_headers(Some("k1"), None), Some("k1"));
    assert_eq!(api_key_from_headers(None, Some("apikey k2")), Some("k2"));
    assert_eq!(api_key_from_headers(None, Some("ApiKey   k2 ")), Some("k2"));
    assert_eq!(api_key_from_headers(None, Some("APIKEY\tk2")), Some("k2"));
    // X-API-Key wins, even over a right Authorization.
    assert_eq!(
        api_key_from_headers(Some("wrong"), Some("apikey right")),
        Some("wrong")
    );
    // An empty X-API-Key is as if absent.
    assert_eq!(
        api_key_from_headers(Some(""), Some("apikey k3")),
        Some("k3")
    );
    for bad in [
        "Bearer k",
        "apikey",
        "apikey a b",
        "",
        "   ",
        "apikeyk",
        "basic apikey",
    ] {
        assert_eq!(api_key_from_headers(None, Some(bad)), None, "{bad:?}");
    }
    assert_eq!(api_key_from_headers(None, None), None);
}

#[test]
fn keys_compare_exactly() {
    assert!(keys_equal(b"abc", b"abc"));
    assert!(keys_equal(b"", b""));
    for other in [&b"abd"[..], b"ab", b"abcd", b"", b"ABC", b"abc\0"] {
        assert!(!keys_equal(other, b"abc"), "{other:?}");
        assert!(!keys_equal(b"abc", other), "{other:?}");
    }
}

#[test]
fn api_off_when_key_not_configured() {
    let mut e = Fake::default();
    for key in [None, Some(""), Some("anything")] {
        let r = ApiRequest {
            api_key: key,
            ..req("info", "{}")
        };
        let resp = handle(&r, "", &mut e);
        assert_eq!(resp.status, 404, "{key:?}");
        assert!(resp.body.is_empty());
    }
    assert!(e.calls.is_empty());
}

#[test]
fn wrong_or_missing_key_is_401_before_anything_else() {
    let mut e = Fake::default();
    let prefix = &KEY[..KEY.len() - 1];
    let longer = format!("{KEY}x");
    for key in [
        None,
        Some(""),
        Some("nope"),
        Some(prefix),
        Some(longer.as_str()),
    ] {
        for method in ["publish", "info", "no_such_method", "batch"] {
            let r = ApiRequest {
                api_key: key,
                ..req(method, "{\"channel\":\"a\",\"data\":1}")
            };
            let resp = handle(&r, KEY, &mut e);
            assert_eq!(resp.status, 401, "{key:?} {method}");
            assert!(resp.body.is_empty());
        }
    }
    // Even a malformed body: auth is checked first.
    let r = ApiRequest {
        api_key: None,
        ..req("publish", "{{{")
    };
    assert_eq!(handle(&r, KEY, &mut e).status, 401);
    assert!(e.calls.is_empty());
}

#[test]
fn unknown_and_unimplemented_methods_are_404() {
    let mut e = Fake::default();
    for method in [
        "/",
        "batch/x",
        "nope",
        "Publish",
        "subscribe",
        "refresh",
        "rpc",
        "publish/x",
        "connections",
    ] {
        let (status, body) = call(&mut e, method, "{}");
        assert_eq!(status, 404, "{method:?}");
        assert!(body.is_empty());
    }
    assert!(e.calls.is_empty());
}

#[test]
fn works_with_a_trait_object() {
    let mut fake = Fake::default();
    let engine: &mut dyn ApiEngine = &mut fake;
    let resp = handle(&req("presence_stats", r#"{"channel":"c"}"#), KEY, engine);
    assert_eq!(resp.body, br#"{"result":{"num_clients":3,"num_users":2}}"#);
    assert_eq!(fake.calls, [Rec::PresenceStats("c".into())]);
}
