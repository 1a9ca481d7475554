//! Connection and subscription JWT verification for the Centrifugo client protocol (v2).
//!
//! Pure functions: the caller passes the current time (`now_secs`, Unix seconds), so
//! the engine can use its cached clock and tests can pin time. Signatures are checked
//! by `jsonwebtoken` (RustCrypto backend); claim semantics follow Centrifugo
//! (`internal/jwtverify/token_verifier_jwt.go`, `internal/client/handler.go`, and
//! <https://centrifugal.dev/docs/server/authentication>,
//! <https://centrifugal.dev/docs/server/channel_token_auth>).
//!
//! # Claims
//!
//! | claim | connection token | subscription token |
//! | --- | --- | --- |
//! | `sub` | user id; empty = anonymous (refused if `disallow_anonymous_connection_tokens`) | must equal the connection's user (both may be empty) |
//! | `exp` | token validity; also the connection expiry unless `expire_at` is set | same, for the subscription |
//! | `nbf` | token not valid before; failing it is treated like `exp` (Centrifugo) | same |
//! | `expire_at` | overrides `exp` for connection expiry; `0` = never expires | same, for the subscription |
//! | `info` / `b64info` | connection info (raw JSON / standard base64 bytes, `b64info` wins) | channel info |
//! | `channels` | server-side subscriptions | - |
//! | `subs` | server-side subscriptions, wins over `channels`; only the channel names are honoured, per-channel options are ignored for now | - |
//! | `meta` | kept raw for the backend, never sent to clients | - |
//! | `channel` | refused in a connection token (Centrifugo) | required; must equal the requested channel |
//! | `client` | - | deprecated (Centrifugo v3): if set, must equal the client id |
//! | `data` / `b64data` | - | data for the subscribe reply |
//! | `aud` / `iss` | checked only when `token_audience` / `token_issuer` are set | same |
//! | `override`, `iat`, `jti` | ignored | ignored |
//!
//! Times: no leeway, like Centrifugo: `exp` is valid while `now < exp` (a token whose
//! `exp` equals `now` is expired), `nbf` once `now >= nbf`. Fractional NumericDates
//! are truncated. Not supported: ES512 (not in `jsonwebtoken`), JWKS, `user_id_claim`,
//! audience/issuer regexes, per-namespace channel checks (done by the engine).
//!
//! Tokens never enter an error, a claim struct or a log line: errors carry only the
//! kind of failure, so their `Debug`/`Display` cannot leak a token.

use std::fmt;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[cfg(test)]
pub(crate) mod tests;

/// Token settings; field names are Centrifugo's config keys. Empty strings count as unset.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HMAC secret for HS256/HS384/HS512.
    pub token_hmac_secret_key: Secret,
    /// PEM public key for RS256/RS384/RS512.
    pub token_rsa_public_key: String,
    /// PEM public key for ES256/ES384.
    pub token_ecdsa_public_key: String,
    /// When set, the `aud` claim must contain it.
    pub token_audience: String,
    /// When set, the `iss` claim must equal it.
    pub token_issuer: String,
    /// Connecting with no token at all gives an anonymous connection (empty user).
    pub allow_anonymous_connect_without_token: bool,
    /// Connection tokens with an empty `sub` are refused.
    pub disallow_anonymous_connection_tokens: bool,
}

/// The HMAC secret: its `Debug` is redacted so config dumps cannot leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl<T: Into<String>> From<T> for Secret {
    fn from(s: T) -> Self {
        Secret(s.into())
    }
}

/// A key in [`AuthConfig`] that could not be used; `key` is the config key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for AuthConfigError {}

/// What a token is being checked for: the same failure maps to different protocol
/// answers depending on the command (see [`TokenError::protocol_refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    Connect,
    /// Connection token refresh (`refresh` command).
    Refresh,
    Subscribe,
    /// Subscription token refresh (`sub_refresh` command).
    SubRefresh,
}

/// Why a token was refused. Carries no token text by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenErrorKind {
    /// Not three base64url parts, bad JSON, or a claim of the wrong type.
    Malformed,
    /// Signature does not verify with the configured key for the token's algorithm.
    BadSignature,
    /// `alg` is not one we have a key for (`none`, `PS256`, `EdDSA`, an HS token when
    /// no HMAC secret is configured, ...). Keys are picked by algorithm family, so an
    /// RSA public key is never used as an HMAC secret.
    WrongAlgorithm,
    /// A claim is present but not acceptable (`aud`, `iss`, `channel` in a connection
    /// token, missing `channel` in a subscription token, undecodable `b64info`).
    InvalidClaim(&'static str),
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// The subscription token's `channel` is not the requested channel.
    WrongChannel,
    /// The token's `sub` is not the connection's user.
    WrongUser,
    /// The deprecated `client` claim names another client.
    WrongClient,
    /// Empty `sub` while `disallow_anonymous_connection_tokens` is set.
    AnonymousNotAllowed,
    /// No connection token while `allow_anonymous_connect_without_token` is off.
    TokenRequired,
}

/// A refused token: what went wrong and for which command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenError {
    pub kind: TokenErrorKind,
    pub usage: TokenUse,
}

/// The answer the server sends for a refusal. Local for now; to be unified with the
/// protocol module's error and disconnect types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Error reply to the command; the connection stays open.
    Error(u32, &'static str),
    /// Disconnect with this close code and reason. 3500-3999 are terminal for the
    /// SDKs (centrifuge-js `centrifuge.ts`: no reconnect).
    Disconnect(u32, &'static str),
}

// Codes from centrifugal/centrifuge `errors.go` and `disconnect.go`.
const ERROR_PERMISSION_DENIED: Refusal = Refusal::Error(103, "permission denied");
const ERROR_TOKEN_EXPIRED: Refusal = Refusal::Error(109, "token expired");
const ERROR_EXPIRED: Refusal = Refusal::Error(110, "expired");
const DISCONNECT_EXPIRED: Refusal = Refusal::Disconnect(3005, "connection expired");
const DISCONNECT_INVALID_TOKEN: Refusal = Refusal::Disconnect(3500, "invalid token");
const DISCONNECT_BAD_REQUEST: Refusal = Refusal::Disconnect(3501, "bad request");
const DISCONNECT_PERMISSION_DENIED: Refusal = Refusal::Disconnect(3507, "permission denied");

impl TokenErrorKind {
    fn on(self, usage: TokenUse) -> TokenError {
        TokenError { kind: self, usage }
    }
}

impl TokenError {
    /// The protocol answer, as Centrifugo gives it (`internal/client/handler.go`,
    /// centrifuge `client.go`):
    ///
    /// - expired / not yet valid: connect and subscribe get error 109 "token expired",
    ///   on which the SDKs fetch a new token and retry (centrifuge-js checks
    ///   `code === 109`); a connection refresh gets disconnect 3005 "connection
    ///   expired"; a subscription refresh gets error 110 "expired".
    /// - invalid (malformed, signature, algorithm, claims): disconnect 3500 "invalid
    ///   token", except on subscribe where it is error 103 "permission denied".
    /// - user, channel or client mismatch: disconnect 3500 "invalid token" (also on
    ///   subscribe: the client asked with someone else's token).
    /// - anonymous token disallowed: disconnect 3507 "permission denied".
    /// - no token and anonymous connect not allowed: disconnect 3501 "bad request"
    ///   (centrifuge's "client credentials not found").
    pub fn protocol_refusal(&self) -> Refusal {
        use TokenErrorKind::*;
        match (self.kind, self.usage) {
            (Expired | NotYetValid, TokenUse::Connect | TokenUse::Subscribe) => ERROR_TOKEN_EXPIRED,
            (Expired | NotYetValid, TokenUse::Refresh) => DISCONNECT_EXPIRED,
            (Expired | NotYetValid, TokenUse::SubRefresh) => ERROR_EXPIRED,
            (Malformed | BadSignature | WrongAlgorithm | InvalidClaim(_), TokenUse::Subscribe) => {
                ERROR_PERMISSION_DENIED
            }
            (Malformed | BadSignature | WrongAlgorithm | InvalidClaim(_), _) => {
                DISCONNECT_INVALID_TOKEN
            }
            (WrongChannel | WrongUser | WrongClient, _) => DISCONNECT_INVALID_TOKEN,
            (AnonymousNotAllowed, _) => DISCONNECT_PERMISSION_DENIED,
            (TokenRequired, _) => DISCONNECT_BAD_REQUEST,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.usage {
            TokenUse::Connect | TokenUse::Refresh => "connection token",
            TokenUse::Subscribe | TokenUse::SubRefresh => "subscription token",
        };
        let why = match self.kind {
            TokenErrorKind::Malformed => "malformed",
            TokenErrorKind::BadSignature => "bad signature",
            TokenErrorKind::WrongAlgorithm => "algorithm not configured",
            TokenErrorKind::InvalidClaim(claim) => {
                return write!(f, "{what}: invalid {claim} claim")
            }
            TokenErrorKind::Expired => "expired",
            TokenErrorKind::NotYetValid => "not yet valid",
            TokenErrorKind::WrongChannel => "channel mismatch",
            TokenErrorKind::WrongUser => "user mismatch",
            TokenErrorKind::WrongClient => "client mismatch",
            TokenErrorKind::AnonymousNotAllowed => "anonymous tokens not allowed",
            TokenErrorKind::TokenRequired => "required (anonymous connect not allowed)",
        };
        write!(f, "{what}: {why}")
    }
}

impl std::error::Error for TokenError {}

/// A connection token for the demo page's user `user` (1-32 of
/// `[A-Za-z0-9_-]`), valid for a day, signed with the demo secret.
/// `None` for a name outside that alphabet.
pub fn demo_token(secret: &str, user: &str) -> Option<String> {
    let ok = (1..=32).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return None;
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = serde_json::json!({ "sub": user, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).ok()?;
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).ok()
}

/// A verified connection token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectClaims {
    /// `sub`; empty for an anonymous connection.
    pub user: String,
    /// When the connection must be refreshed (`expire_at`, else `exp`); `None` = never.
    pub expires_at: Option<u64>,
    /// `b64info` decoded, else the raw JSON of `info`.
    pub info: Option<Vec<u8>>,
    /// Channels to subscribe server-side: the keys of `subs` (sorted) if any, else `channels`.
    pub channels: Vec<String>,
    /// `meta` as raw JSON text, backend-only (never sent to clients).
    pub meta: Option<String>,
}

/// A verified subscription token (user, channel and client already matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeClaims {
    /// When the subscription must be refreshed (`expire_at`, else `exp`); `None` = never.
    pub expires_at: Option<u64>,
    /// Channel info: `b64info` decoded, else the raw JSON of `info`.
    pub info: Option<Vec<u8>>,
    /// Data for the subscribe reply: `b64data` decoded, else the raw JSON of `data`.
    pub data: Option<Vec<u8>>,
}

/// NumericDate: JSON integer or float seconds, truncated (negative stays negative).
#[derive(Clone, Copy)]
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(v) = n.as_i64() {
            Ok(NumericDate(v))
        } else if let Some(v) = n.as_u64() {
            Ok(NumericDate(i64::try_from(v).unwrap_or(i64::MAX)))
        } else {
            // `as` saturates; NaN cannot come from JSON.
            Ok(NumericDate(n.as_f64().unwrap_or(0.0) as i64))
        }
    }
}

/// Every claim either token kind may carry (Centrifugo decodes `channel` in connection
/// tokens too, to refuse it).
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    expire_at: Option<NumericDate>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    channels: Option<Vec<String>>,
    subs: Option<serde_json::Map<String, serde_json::Value>>,
    meta: Option<Box<RawValue>>,
    channel: Option<String>,
    client: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
}

/// Verifies tokens against the configured keys. Built once from [`AuthConfig`].
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
    allow_anonymous_connect_without_token: bool,
    disallow_anonymous_connection_tokens: bool,
}

/// Shows which keys are set, never the keys (`DecodingKey`'s own `Debug` prints the
/// HMAC secret bytes).
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

const RSA_KEY: &str = "token_rsa_public_key";
const EC_KEY: &str = "token_ecdsa_public_key";

fn non_empty(s: &str) -> Option<&str> {
    (!s.trim().is_empty()).then_some(s)
}

fn public_pem(
    key: &'static str,
    pem: &str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<Option<DecodingKey>, AuthConfigError> {
    let Some(pem) = non_empty(pem) else {
        return Ok(None);
    };
    let err = |reason: String| AuthConfigError { key, reason };
    // A private key here would work with some parsers; refuse it so it gets moved
    // out of the relay's config.
    if pem.contains("PRIVATE KEY") {
        return Err(err("expected a PEM public key, found a private key".into()));
    }
    parse(pem.as_bytes())
        .map(Some)
        .map_err(|e| err(format!("not a usable PEM public key: {e}")))
}

impl Verifier {
    /// Parses the keys. An empty config is valid: every token is then refused as
    /// [`TokenErrorKind::WrongAlgorithm`].
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthConfigError> {
        let hmac = non_empty(&config.token_hmac_secret_key.0)
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .transpose()
            .map_err(|e| AuthConfigError {
                key: "token_hmac_secret_key",
                reason: e.to_string(),
            })?;
        let c = config;
        Ok(Verifier {
            hmac,
            rsa: public_pem(RSA_KEY, &c.token_rsa_public_key, DecodingKey::from_rsa_pem)?,
            ecdsa: public_pem(EC_KEY, &c.token_ecdsa_public_key, DecodingKey::from_ec_pem)?,
            audience: non_empty(&config.token_audience).map(str::to_owned),
            issuer: non_empty(&config.token_issuer).map(str::to_owned),
            allow_anonymous_connect_without_token: config.allow_anonymous_connect_without_token,
            disallow_anonymous_connection_tokens: config.disallow_anonymous_connection_tokens,
        })
    }

    /// A client sent `connect` without a token: anonymous if the config allows it.
    pub fn connect_without_token(&self) -> Result<ConnectClaims, TokenError> {
        if !self.allow_anonymous_connect_without_token {
            return Err(TokenErrorKind::TokenRequired.on(TokenUse::Connect));
        }
        Ok(ConnectClaims::default())
    }

    /// Verifies the token of a `connect` command.
    pub fn verify_connect(&self, token: &str, now_secs: u64) -> Result<ConnectClaims, TokenError> {
        let claims = self.connect_claims(token, now_secs, TokenUse::Connect)?;
        if claims.user.is_empty() && self.disallow_anonymous_connection_tokens {
            return Err(TokenErrorKind::AnonymousNotAllowed.on(TokenUse::Connect));
        }
        Ok(claims)
    }

    /// Verifies the token of a `refresh` command: same as connect, and `sub` must be
    /// the connection's user (Centrifugo: "refresh token user mismatch").
    pub fn verify_refresh(
        &self,
        token: &str,
        client_user: &str,
        now_secs: u64,
    ) -> Result<ConnectClaims, TokenError> {
        let claims = self.connect_claims(token, now_secs, TokenUse::Refresh)?;
        if claims.user != client_user {
            return Err(TokenErrorKind::WrongUser.on(TokenUse::Refresh));
        }
        Ok(claims)
    }

    /// Verifies the token of a `subscribe` command for `channel`, sent by the client
    /// `client_id` authenticated as `client_user` (empty if anonymous).
    ///
    /// Centrifugo's rules: the token's `channel` must equal the requested channel,
    /// its `sub` must equal the connection's user, and the deprecated `client` claim
    /// (Centrifugo v3 tokens were bound to a client id), when present, must equal
    /// `client_id`.
    pub fn verify_subscribe(
        &self,
        token: &str,
        client_user: &str,
        client_id: &str,
        channel: &str,
        now_secs: u64,
    ) -> Result<SubscribeClaims, TokenError> {
        let who = [client_user, client_id, channel];
        self.subscribe_claims(TokenUse::Subscribe, token, who, now_secs)
    }

    /// Verifies the token of a `sub_refresh` command; same rules as subscribe.
    pub fn verify_sub_refresh(
        &self,
        token: &str,
        client_user: &str,
        client_id: &str,
        channel: &str,
        now_secs: u64,
    ) -> Result<SubscribeClaims, TokenError> {
        let who = [client_user, client_id, channel];
        self.subscribe_claims(TokenUse::SubRefresh, token, who, now_secs)
    }

    fn connect_claims(
        &self,
        token: &str,
        now_secs: u64,
        usage: TokenUse,
    ) -> Result<ConnectClaims, TokenError> {
        let raw = self.decode(token, now_secs, usage)?;
        let invalid = |claim| TokenErrorKind::InvalidClaim(claim).on(usage);
        if raw.channel.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(invalid("channel"));
        }
        let info = bytes_claim(raw.info, raw.b64info).map_err(|()| invalid("b64info"))?;
        let channels = match raw.subs {
            Some(subs) if !subs.is_empty() => subs.into_iter().map(|(k, _)| k).collect(),
            _ => raw.channels.unwrap_or_default(),
        };
        Ok(ConnectClaims {
            user: raw.sub.unwrap_or_default(),
            expires_at: expires_at(raw.expire_at, raw.exp),
            info,
            channels,
            meta: raw.meta.map(|m| m.get().to_owned()),
        })
    }

    fn subscribe_claims(
        &self,
        usage: TokenUse,
        token: &str,
        [client_user, client_id, channel]: [&str; 3],
        now_secs: u64,
    ) -> Result<SubscribeClaims, TokenError> {
        let raw = self.decode(token, now_secs, usage)?;
        let fail = |kind: TokenErrorKind| kind.on(usage);
        let token_channel = raw.channel.unwrap_or_default();
        if token_channel.is_empty() {
            return Err(fail(TokenErrorKind::InvalidClaim("channel")));
        }
        let info = bytes_claim(raw.info, raw.b64info)
            .map_err(|()| fail(TokenErrorKind::InvalidClaim("b64info")))?;
        let data = bytes_claim(raw.data, raw.b64data)
            .map_err(|()| fail(TokenErrorKind::InvalidClaim("b64data")))?;
        if channel.is_empty() || token_channel != channel {
            return Err(fail(TokenErrorKind::WrongChannel));
        }
        if raw.sub.as_deref().unwrap_or_default() != client_user {
            return Err(fail(TokenErrorKind::WrongUser));
        }
        if matches!(raw.client.as_deref(), Some(c) if !c.is_empty() && c != client_id) {
            return Err(fail(TokenErrorKind::WrongClient));
        }
        Ok(SubscribeClaims {
            expires_at: expires_at(raw.expire_at, raw.exp),
            info,
            data,
        })
    }

    /// Algorithm check, signature, `aud`/`iss`, then `exp`/`nbf` against `now_secs`.
    fn decode(&self, token: &str, now_secs: u64, usage: TokenUse) -> Result<RawClaims, TokenError> {
        let fail = |kind: TokenErrorKind| kind.on(usage);
        let alg = header_alg(token).ok_or(fail(TokenErrorKind::Malformed))?;
        // Only the algorithms Centrifugo enables per key type; anything else
        // (`none`, PS*, EdDSA, ES512) is refused before any key is touched.
        let (alg, key) = match alg.as_str() {
            "HS256" => (Algorithm::HS256, &self.hmac),
            "HS384" => (Algorithm::HS384, &self.hmac),
            "HS512" => (Algorithm::HS512, &self.hmac),
            "RS256" => (Algorithm::RS256, &self.rsa),
            "RS384" => (Algorithm::RS384, &self.rsa),
            "RS512" => (Algorithm::RS512, &self.rsa),
            "ES256" => (Algorithm::ES256, &self.ecdsa),
            "ES384" => (Algorithm::ES384, &self.ecdsa),
            _ => return Err(fail(TokenErrorKind::WrongAlgorithm)),
        };
        let key = key.as_ref().ok_or(fail(TokenErrorKind::WrongAlgorithm))?;

        let mut validation = Validation::new(alg);
        // Time is checked below against the caller's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = self.audience.is_some();
        // Configured means required: a token without `aud`/`iss` is refused (Centrifugo).
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let raw = jsonwebtoken::decode::<RawClaims>(token, key, &validation)
            .map_err(|e| fail(classify(e.kind())))?
            .claims;

        let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
        if raw.exp.is_some_and(|exp| exp.0 <= now) {
            return Err(fail(TokenErrorKind::Expired));
        }
        if raw.nbf.is_some_and(|nbf| nbf.0 > now) {
            return Err(fail(TokenErrorKind::NotYetValid));
        }
        Ok(raw)
    }
}

/// `alg` from the header, read ourselves so that unknown values (`none`) are reported
/// as a wrong algorithm rather than a parse error.
fn header_alg(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (header, _, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    serde_json::from_slice::<RawHeader>(&json)
        .ok()
        .map(|h| h.alg)
}

fn classify(kind: &ErrorKind) -> TokenErrorKind {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            TokenErrorKind::BadSignature
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => TokenErrorKind::WrongAlgorithm,
        ErrorKind::InvalidAudience => TokenErrorKind::InvalidClaim("aud"),
        ErrorKind::InvalidIssuer => TokenErrorKind::InvalidClaim("iss"),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenErrorKind::InvalidClaim("aud"),
        ErrorKind::MissingRequiredClaim(_) => TokenErrorKind::InvalidClaim("iss"),
        _ => TokenErrorKind::Malformed,
    }
}

/// Connection/subscription expiry: `expire_at` wins when present (`0` = never), else `exp`.
fn expires_at(expire_at: Option<NumericDate>, exp: Option<NumericDate>) -> Option<u64> {
    let secs = match expire_at {
        Some(at) => at.0,
        None => exp?.0,
    };
    u64::try_from(secs).ok().filter(|&s| s > 0)
}

/// `b64…` (standard base64, padded, as Centrifugo's Go decoder) wins over the raw JSON claim.
fn bytes_claim(raw: Option<Box<RawValue>>, b64: Option<String>) -> Result<Option<Vec<u8>>, ()> {
    match b64.filter(|s| !s.is_empty()) {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|_| ()),
        None => Ok(raw.map(|r| r.get().as_bytes().to_vec())),
    }
}
