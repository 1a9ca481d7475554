//! Tests for token verification. RSA and P-256 key pairs are generated at run time
//! (once per test binary), so no key material is committed.

use std::sync::OnceLock;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &str = "test-secret-not-for-production";
const NOW: u64 = 1_700_000_000;

pub(crate) struct KeyPair {
    pub(crate) private_pem: String,
    pub(crate) public_pem: String,
}

fn rsa_pair(which: usize) -> &'static KeyPair {
    static KEYS: OnceLock<Vec<KeyPair>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        (0..2)
            .map(|_| {
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
                KeyPair {
                    private_pem: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                    public_pem: key
                        .to_public_key()
                        .to_public_key_pem(LineEnding::LF)
                        .unwrap(),
                }
            })
            .collect()
    })[which]
}

pub(crate) fn ec_pair(which: usize) -> &'static KeyPair {
    static KEYS: OnceLock<Vec<KeyPair>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        (0..2)
            .map(|_| {
                let key = p256::SecretKey::generate();
                KeyPair {
                    private_pem: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                    public_pem: key.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
                }
            })
            .collect()
    })[which]
}

fn hs_verifier() -> Verifier {
    Verifier::new(&AuthConfig {
        token_hmac_secret_key: SECRET.into(),
        ..Default::default()
    })
    .unwrap()
}

fn all_keys_config() -> AuthConfig {
    AuthConfig {
        token_hmac_secret_key: SECRET.into(),
        token_rsa_public_key: rsa_pair(0).public_pem.clone(),
        token_ecdsa_public_key: ec_pair(0).public_pem.clone(),
        ..Default::default()
    }
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
}

fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn kind<T: fmt::Debug>(r: Result<T, TokenError>) -> TokenErrorKind {
    r.unwrap_err().kind
}

/// Builds `header.payload.signature` by hand, for tokens no library will sign.
fn raw_token(header: &Value, claims: &Value, sig: &str) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{}", b64(header), b64(claims), sig)
}

#[test]
fn hs256_valid_connect() {
    let t =
        hs256(&json!({"sub": "42", "exp": NOW + 60, "info": {"name": "ann"}, "meta": {"k": 1}}));
    let c = hs_verifier().verify_connect(&t, NOW).unwrap();
    assert_eq!(c.user, "42");
    assert_eq!(c.expires_at, Some(NOW + 60));
    assert_eq!(c.info.as_deref(), Some(br#"{"name":"ann"}"#.as_slice()));
    assert_eq!(c.meta.as_deref(), Some(r#"{"k":1}"#));
    assert!(c.channels.is_empty());
}

#[test]
fn hs384_hs512_accepted() {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = sign(alg, &json!({"sub": "1"}), &key);
        assert_eq!(hs_verifier().verify_connect(&t, NOW).unwrap().user, "1");
    }
}

#[test]
fn exp_boundary_and_expiry_codes() {
    let t = hs256(&json!({"sub": "1", "exp": NOW}));
    let v = hs_verifier();
    assert!(v.verify_connect(&t, NOW - 1).is_ok());
    let e = v.verify_connect(&t, NOW).unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::Expired);
    assert_eq!(e.protocol_refusal(), Refusal::Error(109, "token expired"));
    let e = v.verify_refresh(&t, "1", NOW + 5).unwrap_err();
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3005, "connection expired")
    );
    // Fractional NumericDate is truncated.
    let t = hs256(&json!({"sub": "1", "exp": (NOW as f64) + 0.9}));
    assert_eq!(kind(v.verify_connect(&t, NOW)), TokenErrorKind::Expired);
}

#[test]
fn nbf_boundary() {
    let t = hs256(&json!({"sub": "1", "nbf": NOW}));
    let v = hs_verifier();
    assert!(v.verify_connect(&t, NOW).is_ok());
    let e = v.verify_connect(&t, NOW - 1).unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::NotYetValid);
    assert_eq!(e.protocol_refusal(), Refusal::Error(109, "token expired"));
}

#[test]
fn expire_at_overrides_exp() {
    let v = hs_verifier();
    let t = hs256(&json!({"sub": "1", "exp": NOW + 60, "expire_at": NOW + 600}));
    assert_eq!(
        v.verify_connect(&t, NOW).unwrap().expires_at,
        Some(NOW + 600)
    );
    // `expire_at: 0`: the connection never expires, the token itself still does.
    let t = hs256(&json!({"sub": "1", "exp": NOW + 60, "expire_at": 0}));
    assert_eq!(v.verify_connect(&t, NOW).unwrap().expires_at, None);
    assert_eq!(
        kind(v.verify_connect(&t, NOW + 60)),
        TokenErrorKind::Expired
    );
}

#[test]
fn bad_signature_and_malformed() {
    let other = EncodingKey::from_secret(b"another secret").unwrap();
    let t = sign(Algorithm::HS256, &json!({"sub": "1"}), &other);
    let e = hs_verifier().verify_connect(&t, NOW).unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::BadSignature);
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3500, "invalid token")
    );
    for bad in ["", "abc", "a.b", "a.b.c.d", "!!.??.**"] {
        assert_eq!(
            kind(hs_verifier().verify_connect(bad, NOW)),
            TokenErrorKind::Malformed,
            "{bad}"
        );
    }
    // Signed, but a claim has the wrong type.
    let t = hs256(&json!({"sub": "1", "exp": "tomorrow"}));
    assert_eq!(
        kind(hs_verifier().verify_connect(&t, NOW)),
        TokenErrorKind::Malformed
    );
}

#[test]
fn none_algorithm_refused() {
    let v = Verifier::new(&all_keys_config()).unwrap();
    for alg in ["none", "None", "NONE", "PS256", "EdDSA", "ES512", ""] {
        let t = raw_token(
            &json!({"alg": alg, "typ": "JWT"}),
            &json!({"sub": "admin"}),
            "",
        );
        assert_eq!(
            kind(v.verify_connect(&t, NOW)),
            TokenErrorKind::WrongAlgorithm,
            "{alg}"
        );
    }
    let t = raw_token(&json!({"typ": "JWT"}), &json!({"sub": "admin"}), "");
    assert_eq!(kind(v.verify_connect(&t, NOW)), TokenErrorKind::Malformed);
}

#[test]
fn alg_confusion_rsa_public_key_as_hmac_secret() {
    let pem = &rsa_pair(0).public_pem;
    let forged = sign(
        Algorithm::HS256,
        &json!({"sub": "admin"}),
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    );
    // Only an RSA key configured: HS256 is not an enabled algorithm.
    let rsa_only = Verifier::new(&AuthConfig {
        token_rsa_public_key: pem.clone(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        kind(rsa_only.verify_connect(&forged, NOW)),
        TokenErrorKind::WrongAlgorithm
    );
    // Both configured: HS256 is checked with the HMAC secret only.
    let both = Verifier::new(&all_keys_config()).unwrap();
    assert_eq!(
        kind(both.verify_connect(&forged, NOW)),
        TokenErrorKind::BadSignature
    );
    // Same with the EC public key.
    let ec_pem = &ec_pair(0).public_pem;
    let forged = sign(
        Algorithm::HS256,
        &json!({"sub": "admin"}),
        &EncodingKey::from_secret(ec_pem.as_bytes()).unwrap(),
    );
    assert_eq!(
        kind(both.verify_connect(&forged, NOW)),
        TokenErrorKind::BadSignature
    );
}

#[test]
fn hs_token_refused_without_hmac_secret() {
    let v = Verifier::new(&AuthConfig::default()).unwrap();
    assert_eq!(
        kind(v.verify_connect(&hs256(&json!({"sub": "1"})), NOW)),
        TokenErrorKind::WrongAlgorithm
    );
}

#[test]
fn rs256_valid_and_wrong_key() {
    let v = Verifier::new(&all_keys_config()).unwrap();
    let good = EncodingKey::from_rsa_pem(rsa_pair(0).private_pem.as_bytes()).unwrap();
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let t = sign(alg, &json!({"sub": "7", "exp": NOW + 1}), &good);
        assert_eq!(v.verify_connect(&t, NOW).unwrap().user, "7");
    }
    let wrong = EncodingKey::from_rsa_pem(rsa_pair(1).private_pem.as_bytes()).unwrap();
    let t = sign(Algorithm::RS256, &json!({"sub": "7"}), &wrong);
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::BadSignature
    );
    // PS256 with the right key is still refused: Centrifugo enables RS* only.
    let t = sign(Algorithm::PS256, &json!({"sub": "7"}), &good);
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::WrongAlgorithm
    );
}

#[test]
fn es256_valid_and_wrong_key() {
    let v = Verifier::new(&all_keys_config()).unwrap();
    let good = EncodingKey::from_ec_pem(ec_pair(0).private_pem.as_bytes()).unwrap();
    let t = sign(Algorithm::ES256, &json!({"sub": "9"}), &good);
    assert_eq!(v.verify_connect(&t, NOW).unwrap().user, "9");
    let wrong = EncodingKey::from_ec_pem(ec_pair(1).private_pem.as_bytes()).unwrap();
    let t = sign(Algorithm::ES256, &json!({"sub": "9"}), &wrong);
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::BadSignature
    );
    // ES256 token where only RSA is configured.
    let rsa_only = Verifier::new(&AuthConfig {
        token_rsa_public_key: rsa_pair(0).public_pem.clone(),
        ..Default::default()
    })
    .unwrap();
    let t = sign(Algorithm::ES256, &json!({"sub": "9"}), &good);
    assert_eq!(
        kind(rsa_only.verify_connect(&t, NOW)),
        TokenErrorKind::WrongAlgorithm
    );
}

#[test]
fn pem_errors_name_the_key() {
    let e = Verifier::new(&AuthConfig {
        token_rsa_public_key: "not a pem".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.key, "token_rsa_public_key");
    assert!(e.to_string().starts_with("token_rsa_public_key: "), "{e}");
    let e = Verifier::new(&AuthConfig {
        token_ecdsa_public_key: rsa_pair(0).public_pem.clone(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.key, "token_ecdsa_public_key");
    let e = Verifier::new(&AuthConfig {
        token_ecdsa_public_key: ec_pair(0).private_pem.clone(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.key, "token_ecdsa_public_key");
    assert!(e.reason.contains("private key"));
}

#[test]
fn anonymous_handling() {
    let t = hs256(&json!({"exp": NOW + 10}));
    let v = hs_verifier();
    assert_eq!(v.verify_connect(&t, NOW).unwrap().user, "");
    let e = v.connect_without_token().unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::TokenRequired);
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3501, "bad request")
    );

    let strict = Verifier::new(&AuthConfig {
        token_hmac_secret_key: SECRET.into(),
        disallow_anonymous_connection_tokens: true,
        allow_anonymous_connect_without_token: true,
        ..Default::default()
    })
    .unwrap();
    let e = strict.verify_connect(&t, NOW).unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::AnonymousNotAllowed);
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3507, "permission denied")
    );
    assert_eq!(strict.connect_without_token().unwrap().user, "");
}

#[test]
fn channels_and_subs_claims() {
    let v = hs_verifier();
    let t = hs256(&json!({"sub": "1", "channels": ["news", "chat:1"]}));
    assert_eq!(
        v.verify_connect(&t, NOW).unwrap().channels,
        ["news", "chat:1"]
    );
    let t = hs256(&json!({"sub": "1", "channels": ["news"], "subs": {"b": {}, "a": {"info": 1}}}));
    assert_eq!(v.verify_connect(&t, NOW).unwrap().channels, ["a", "b"]);
    // A connection token must not carry `channel` (that makes it a subscription token).
    let t = hs256(&json!({"sub": "1", "channel": "news"}));
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::InvalidClaim("channel")
    );
}

#[test]
fn b64info_wins_and_must_decode() {
    let v = hs_verifier();
    let t = hs256(&json!({"sub": "1", "info": {"x": 1}, "b64info": "AAEC"}));
    assert_eq!(v.verify_connect(&t, NOW).unwrap().info, Some(vec![0, 1, 2]));
    let t = hs256(&json!({"sub": "1", "b64info": "***"}));
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::InvalidClaim("b64info")
    );
}

#[test]
fn audience_and_issuer() {
    let v = Verifier::new(&AuthConfig {
        token_hmac_secret_key: SECRET.into(),
        token_audience: "relay".into(),
        token_issuer: "backend".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(v
        .verify_connect(
            &hs256(&json!({"aud": ["x", "relay"], "iss": "backend"})),
            NOW
        )
        .is_ok());
    let t = hs256(&json!({"aud": "other", "iss": "backend"}));
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::InvalidClaim("aud")
    );
    let t = hs256(&json!({"aud": "relay", "iss": "evil"}));
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::InvalidClaim("iss")
    );
    // Configured claims are required.
    let t = hs256(&json!({"iss": "backend"}));
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::InvalidClaim("aud")
    );
    let t = hs256(&json!({"aud": "relay"}));
    assert_eq!(
        kind(v.verify_connect(&t, NOW)),
        TokenErrorKind::InvalidClaim("iss")
    );
    // Not configured: `aud`/`iss` are ignored.
    assert!(hs_verifier()
        .verify_connect(&hs256(&json!({"aud": "any", "iss": "any"})), NOW)
        .is_ok());
}

#[test]
fn refresh_user_must_match() {
    let t = hs256(&json!({"sub": "1", "exp": NOW + 10}));
    assert!(hs_verifier().verify_refresh(&t, "1", NOW).is_ok());
    let e = hs_verifier().verify_refresh(&t, "2", NOW).unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::WrongUser);
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3500, "invalid token")
    );
}

#[test]
fn subscribe_valid() {
    let t = hs256(
        &json!({"sub": "1", "channel": "$room", "exp": NOW + 30, "info": [1], "b64data": "AQ=="}),
    );
    let s = hs_verifier()
        .verify_subscribe(&t, "1", "cid", "$room", NOW)
        .unwrap();
    assert_eq!(
        s,
        SubscribeClaims {
            expires_at: Some(NOW + 30),
            info: Some(b"[1]".to_vec()),
            data: Some(vec![1])
        }
    );
    // Anonymous connection with an anonymous subscription token.
    let t = hs256(&json!({"channel": "$room"}));
    assert!(hs_verifier()
        .verify_subscribe(&t, "", "cid", "$room", NOW)
        .is_ok());
}

#[test]
fn subscribe_mismatches() {
    let v = hs_verifier();
    let t = hs256(&json!({"sub": "1", "channel": "$room", "client": "cid"}));
    let e = v
        .verify_subscribe(&t, "1", "cid", "$other", NOW)
        .unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::WrongChannel);
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3500, "invalid token")
    );
    assert_eq!(
        kind(v.verify_subscribe(&t, "2", "cid", "$room", NOW)),
        TokenErrorKind::WrongUser
    );
    assert_eq!(
        kind(v.verify_subscribe(&t, "", "cid", "$room", NOW)),
        TokenErrorKind::WrongUser
    );
    assert_eq!(
        kind(v.verify_subscribe(&t, "1", "cid2", "$room", NOW)),
        TokenErrorKind::WrongClient
    );
    assert!(v.verify_subscribe(&t, "1", "cid", "$room", NOW).is_ok());
    // Missing `channel` is an invalid token: error 103 on subscribe, 3500 on sub_refresh.
    let t = hs256(&json!({"sub": "1"}));
    let e = v
        .verify_subscribe(&t, "1", "cid", "$room", NOW)
        .unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::InvalidClaim("channel"));
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Error(103, "permission denied")
    );
    let e = v
        .verify_sub_refresh(&t, "1", "cid", "$room", NOW)
        .unwrap_err();
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Disconnect(3500, "invalid token")
    );
}

#[test]
fn subscribe_expiry_and_invalid_codes() {
    let v = hs_verifier();
    let t = hs256(&json!({"sub": "1", "channel": "c", "exp": NOW}));
    let e = v.verify_subscribe(&t, "1", "cid", "c", NOW).unwrap_err();
    assert_eq!(e.protocol_refusal(), Refusal::Error(109, "token expired"));
    let e = v.verify_sub_refresh(&t, "1", "cid", "c", NOW).unwrap_err();
    assert_eq!(e.protocol_refusal(), Refusal::Error(110, "expired"));
    let forged = sign(
        Algorithm::HS256,
        &json!({"sub": "1", "channel": "c"}),
        &EncodingKey::from_secret(b"x").unwrap(),
    );
    let e = v
        .verify_subscribe(&forged, "1", "cid", "c", NOW)
        .unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::BadSignature);
    assert_eq!(
        e.protocol_refusal(),
        Refusal::Error(103, "permission denied")
    );
}

#[test]
fn nothing_prints_a_token_or_secret() {
    let v = Verifier::new(&all_keys_config()).unwrap();
    let t = hs256(&json!({"sub": "1", "channel": "c", "exp": NOW + 10, "info": {"a": 1}}));
    let sig = t.rsplit('.').next().unwrap().to_owned();
    let mut out = Vec::new();
    let c = hs_verifier()
        .verify_connect(&hs256(&json!({"sub": "1", "info": {"a": 1}})), NOW)
        .unwrap();
    out.push(format!("{c:?}"));
    let s = v.verify_subscribe(&t, "1", "cid", "c", NOW).unwrap();
    out.push(format!("{s:?}"));
    for e in [
        v.verify_connect(&t, NOW).unwrap_err(),
        v.verify_subscribe(&t, "2", "cid", "c", NOW).unwrap_err(),
        v.verify_subscribe(&t, "1", "cid", "c", NOW + 60)
            .unwrap_err(),
        v.verify_connect(&format!("{t}x"), NOW).unwrap_err(),
    ] {
        out.push(format!("{e} {e:?} {:?}", e.protocol_refusal()));
    }
    out.push(format!("{v:?} {:?}", all_keys_config()));
    for s in &out {
        assert!(!s.contains(&t) && !s.contains(&sig), "token leaked: {s}");
        assert!(!s.contains(SECRET), "secret leaked: {s}");
    }
}
