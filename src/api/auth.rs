//! Who may call: AWS Signature Version 4, verified against the access keys of `[auth]`, and
//! what each key may do (operation classes, stream name patterns).
//!
//! With no keys configured every request is let through, as before. With keys, every Firehose
//! request must carry an `Authorization` header signed for service `firehose` over the request
//! exactly as the AWS SDKs build it: the signed headers (`host` and `x-amz-date` among them),
//! and the SHA-256 of the body as received. The date must be within 15 minutes of the daemon's
//! clock. Signatures are compared in constant time. Session tokens (`x-amz-security-token`) are
//! refused: spillway has no STS to check them against.
//!
//! Nothing here does I/O; the clock is passed in.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

/// How far a request's `x-amz-date` may be from the daemon's clock.
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// Headers a signature may cover (the SDKs sign about 6).
const MAX_SIGNED_HEADERS: usize = 32;
/// Longest canonical request built: the signed headers' values are bounded by what the
/// HTTP server reads, this bounds the work a hostile signature can ask for.
const MAX_CANONICAL_BYTES: usize = 64 * 1024;

/// The operation classes a key may be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// PutRecord, PutRecordBatch.
    Put,
    /// DescribeDeliveryStream, ListDeliveryStreams, ListTagsForDeliveryStream.
    Read,
    /// CreateDeliveryStream, DeleteDeliveryStream, UpdateDestination, the tag and stream
    /// encryption operations.
    Manage,
}

impl Class {
    pub fn parse(name: &str) -> Option<Class> {
        match name {
            "put" => Some(Class::Put),
            "read" => Some(Class::Read),
            "manage" => Some(Class::Manage),
            _ => None,
        }
    }

    pub fn of(operation: &str) -> Class {
        match operation {
            "PutRecord" | "PutRecordBatch" => Class::Put,
            "DescribeDeliveryStream" | "ListDeliveryStreams" | "ListTagsForDeliveryStream" => {
                Class::Read
            }
            _ => Class::Manage,
        }
    }
}

/// One access key and what it may do.
#[derive(Clone)]
pub struct Key {
    pub access_key_id: String,
    pub secret: String,
    /// Stream names, each possibly with `*` standing for any run of characters.
    pub streams: Vec<String>,
    pub classes: Vec<Class>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<redacted>")
            .field("streams", &self.streams)
            .field("classes", &self.classes)
            .finish()
    }
}

impl Key {
    fn may(&self, class: Class) -> bool {
        self.classes.contains(&class)
    }

    fn may_touch(&self, stream: &str) -> bool {
        self.streams.iter().any(|p| matches_pattern(p, stream))
    }
}

/// The configured keys; empty means no authentication.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    by_id: HashMap<String, Key>,
}

impl Keys {
    pub fn new(keys: Vec<Key>) -> Keys {
        Keys {
            by_id: keys
                .into_iter()
                .map(|k| (k.access_key_id.clone(), k))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// What can be checked from the headers alone, before the body is read: a client without
    /// a well-formed signature by a known key, in the clock window, never gets to hold body
    /// memory. Returns the key and the parsed header.
    pub fn check_headers<'r>(
        &self,
        headers: &'r HeaderMap,
        now: DateTime<Utc>,
    ) -> Result<(&Key, Authorization<'r>), AuthError> {
        // One of each: the operation and date read the first, the signature covers all.
        for name in ["authorization", "x-amz-date", "x-amz-target"] {
            if headers.get_all(name).iter().count() > 1 {
                return Err(AuthError::Incomplete(
                    "Authorization, X-Amz-Date and X-Amz-Target may appear once each",
                ));
            }
        }
        let header = headers
            .get("authorization")
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Incomplete("the Authorization header is not text"))?;
        let auth = parse_authorization(header)?;
        if headers.contains_key("x-amz-security-token") {
            return Err(AuthError::UnknownKey(
                "session tokens (x-amz-security-token) are not accepted; sign with an access key of [auth]",
            ));
        }
        let key = self
            .by_id
            .get(auth.access_key_id)
            .ok_or(AuthError::UnknownKey(
                "The security token included in the request is invalid.",
            ))?;
        if auth.service != "firehose" || auth.terminator != "aws4_request" {
            return Err(AuthError::Incomplete(
                "the credential scope must be <date>/<region>/firehose/aws4_request",
            ));
        }
        let amz_date = header_text(headers, "x-amz-date")
            .ok_or(AuthError::Incomplete("x-amz-date is missing"))?;
        let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
            .map_err(|_| AuthError::Incomplete("x-amz-date is not YYYYMMDDTHHMMSSZ"))?
            .and_utc();
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(AuthError::BadSignature(
                "the credential scope's date is not the date of x-amz-date",
            ));
        }
        if (now - signed_at).num_seconds().abs() > MAX_SKEW_SECONDS {
            return Err(AuthError::BadSignature(
                "Signature expired: x-amz-date is more than 15 minutes from the server's time.",
            ));
        }
        // X-Amz-Target names the operation: unsigned, a captured request could be replayed
        // as another one (its body parses as several).
        for required in ["host", "x-amz-date", "x-amz-target"] {
            if !auth.signed_headers.contains(&required) {
                return Err(AuthError::Incomplete(
                    "SignedHeaders must include host, x-amz-date and x-amz-target",
                ));
            }
        }
        Ok((key, auth))
    }

    /// Checks the request's signature; the key it was signed with, or why it is refused.
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<&Key, AuthError> {
        let (key, auth) = self.check_headers(request.headers, now)?;
        let amz_date = header_text(request.headers, "x-amz-date").unwrap_or_default();
        let body_hash = sha256_hex(request.body);
        if let Some(claimed) = header_text(request.headers, "x-amz-content-sha256")
            && claimed != body_hash
        {
            return Err(AuthError::BadSignature(
                "x-amz-content-sha256 does not match the body received",
            ));
        }
        let canonical = canonical_request(request, &auth.signed_headers, &body_hash)?;
        let scope = [auth.date, auth.region, auth.service, auth.terminator];
        let expected = signature(&key.secret, amz_date, scope, &canonical);
        if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            return Err(AuthError::BadSignature(
                "The request signature we calculated does not match the signature you provided.",
            ));
        }
        Ok(key)
    }
}

/// Signs a request as the AWS SDKs do, for clients of this crate (the load generator): the
/// `x-amz-date` and `Authorization` values to add. `headers` must hold `host` (and whatever
/// else should be signed); `body_sha256` is the hex SHA-256 of the body, computed once per
/// body by the caller.
pub fn sign(
    request: &SignedRequest<'_>,
    body_sha256: &str,
    access_key_id: &str,
    secret: &str,
    region: &str,
    now: DateTime<Utc>,
) -> (String, String) {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let mut headers = request.headers.clone();
    if let Ok(v) = amz_date.parse() {
        headers.insert("x-amz-date", v);
    }
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let with_date = SignedRequest {
        headers: &headers,
        ..*request
    };
    let canonical = canonical_request(&with_date, &names, body_sha256).unwrap_or_default();
    let scope = [date, region, "firehose", "aws4_request"];
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{}, SignedHeaders={}, Signature={}",
        scope.join("/"),
        names.join(";"),
        signature(secret, &amz_date, scope, &canonical)
    );
    (amz_date, authorization)
}

/// The SigV4 signature of a canonical request with `secret`, dated `amz_date`, under the
/// credential scope `date/region/service/aws4_request`.
fn signature(secret: &str, amz_date: &str, scope: [&str; 4], canonical: &str) -> String {
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        scope.join("/"),
        sha256_hex(canonical.as_bytes())
    );
    let mut signing = hmac(format!("AWS4{secret}").as_bytes(), scope[0].as_bytes());
    for part in &scope[1..] {
        signing = hmac(&signing, part.as_bytes());
    }
    hex(&hmac(&signing, to_sign.as_bytes()))
}

/// Lowercase hex SHA-256, as `x-amz-content-sha256` and [`sign`] want it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// What a verified key may do with one request: checked by the operation once it knows the
/// stream the request names.
pub enum Grant<'a> {
    /// No keys are configured.
    Anyone,
    Key(&'a Key),
}

impl Grant<'_> {
    /// May the operation's class be used at all (for `ListDeliveryStreams`, which names none).
    pub fn class(&self, operation: &str) -> Result<(), AuthError> {
        match self {
            Grant::Anyone => Ok(()),
            Grant::Key(k) if k.may(Class::of(operation)) => Ok(()),
            Grant::Key(k) => Err(AuthError::Denied(format!(
                "{} is not allowed to perform {operation}",
                k.access_key_id
            ))),
        }
    }

    /// Whether the key may see `stream` at all (ListDeliveryStreams shows only those).
    pub fn may_see(&self, stream: &str) -> bool {
        match self {
            Grant::Anyone => true,
            Grant::Key(k) => k.may_touch(stream),
        }
    }

    /// May the operation touch `stream`.
    pub fn stream(&self, operation: &str, stream: &str) -> Result<(), AuthError> {
        self.class(operation)?;
        match self {
            Grant::Anyone => Ok(()),
            Grant::Key(k) if k.may_touch(stream) => Ok(()),
            Grant::Key(k) => Err(AuthError::Denied(format!(
                "{} is not allowed to perform {operation} on this delivery stream",
                k.access_key_id
            ))),
        }
    }
}

/// The parts of a request the signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Missing Authentication Token")]
    Missing,
    #[error("{0}")]
    Incomplete(&'static str),
    #[error("{0}")]
    UnknownKey(&'static str),
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("{0}")]
    Denied(String),
}

/// A parsed `Authorization` header.
pub struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/firehose/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=<64 hex>`.
pub fn parse_authorization(header: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = header
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or(AuthError::Incomplete(
            "Authorization must use AWS4-HMAC-SHA256",
        ))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    let twice = AuthError::Incomplete(
        "Authorization names Credential, SignedHeaders or Signature more than once",
    );
    for part in rest.split(',') {
        let part = part.trim();
        let (slot, v) = if let Some(v) = part.strip_prefix("Credential=") {
            (&mut credential, v)
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            (&mut signed, v)
        } else if let Some(v) = part.strip_prefix("Signature=") {
            (&mut signature, v)
        } else {
            continue;
        };
        if slot.replace(v).is_some() {
            return Err(twice);
        }
    }
    let incomplete =
        AuthError::Incomplete("Authorization must name Credential, SignedHeaders and Signature");
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete);
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(AuthError::Incomplete(
            "Credential must be <access key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    let signed_headers: Vec<&str> = signed.split(';').collect();
    let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
    let lowercase = |h: &&str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if !signed_headers.iter().all(lowercase) || !sorted {
        return Err(AuthError::Incomplete(
            "SignedHeaders must be lowercase names, sorted, separated by ';'",
        ));
    }
    if signed_headers.len() > MAX_SIGNED_HEADERS {
        return Err(AuthError::Incomplete(
            "SignedHeaders names too many headers",
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Incomplete("Signature must be 64 hex digits"));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
    })
}

/// The canonical request as SigV4 defines it, for the headers the client signed.
fn canonical_request(
    request: &SignedRequest<'_>,
    signed_headers: &[&str],
    body_hash: &str,
) -> Result<String, AuthError> {
    let mut out = String::with_capacity(512);
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_path(request.path));
    out.push('\n');
    out.push_str(&canonical_query(request.query));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<&str> = request
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map_err(|_| AuthError::BadSignature("a signed header is not text"))
            })
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            return Err(AuthError::BadSignature(
                "a header named in SignedHeaders is not in the request",
            ));
        }
        out.push_str(name);
        out.push(':');
        let joined: Vec<String> = values.iter().map(|v| collapse_spaces(v)).collect();
        out.push_str(&joined.join(","));
        out.push('\n');
        if out.len() > MAX_CANONICAL_BYTES {
            return Err(AuthError::Incomplete("the signed headers are too large"));
        }
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(body_hash);
    Ok(out)
}

/// Trimmed, with runs of spaces inside made one.
fn collapse_spaces(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Each path segment URI-encoded (the AWS SDKs encode once for non-S3 services).
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|seg| uri_encode(&percent_decode(seg)))
        .collect::<Vec<_>>()
        .join("/")
}

/// Parameters sorted by name then value, names and values URI-encoded.
fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bytes `text` stands for: `%XX` decoded, anything else as it is. Bytes, not text, so a
/// sequence that is not UTF-8 is encoded back as it came instead of as U+FFFD.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Two hex digits exactly (`from_str_radix` alone would take `%+1`).
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit)
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Stream name patterns: `*` stands for any run of characters (names have no other
/// special characters).
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Equal lengths compared without an early exit, so timing does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The example of AWS's SigV4 documentation (IAM ListUsers, GET with a query): the
    /// canonical request, string to sign and signature must come out as published.
    #[test]
    fn the_documented_example_verifies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        headers.insert("host", "iam.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
                .parse()
                .unwrap(),
        );
        let request = SignedRequest {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let auth =
            parse_authorization(headers.get("authorization").unwrap().to_str().unwrap()).unwrap();
        let canonical =
            canonical_request(&request, &auth.signed_headers, &sha256_hex(b"")).unwrap();
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        // The service is iam, so `verify` refuses the scope; the signature itself is checked
        // by computing it as `verify` does.
        let key = Key {
            access_key_id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            streams: vec!["*".into()],
            classes: vec![Class::Put],
        };
        let scope = ["20150830", "us-east-1", "iam", "aws4_request"];
        assert_eq!(
            signature(&key.secret, "20150830T123600Z", scope, &canonical),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        let keys = Keys::new(vec![key]);
        let now = "2015-08-30T12:40:00Z".parse().unwrap();
        assert!(matches!(
            keys.verify(&request, now),
            Err(AuthError::Incomplete(_))
        ));
    }

    /// A request signed here the way the SDKs sign, verified at several clock readings: the
    /// 15-minute window at its edges, and a wrong secret.
    #[test]
    fn the_clock_window_at_its_edges() {
        let signed_at: DateTime<Utc> = "2026-12-06T10:00:00Z".parse().unwrap();
        let body = br#"{"DeliveryStreamName":"s"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("host", "localhost:4573".parse().unwrap());
        headers.insert("x-amz-date", "20261206T100000Z".parse().unwrap());
        headers.insert(
            "x-amz-target",
            "Firehose_20150804.DescribeDeliveryStream".parse().unwrap(),
        );
        let signed = ["host", "x-amz-date", "x-amz-target"];
        let canonical = {
            let unsigned = SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body,
            };
            canonical_request(&unsigned, &signed, &sha256_hex(body)).unwrap()
        };
        let scope = ["20261206", "eu-west-1", "firehose", "aws4_request"];
        let signature = signature("sekrit", "20261206T100000Z", scope, &canonical);
        headers.insert(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=AKID/20261206/eu-west-1/firehose/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature={signature}")
                .parse()
                .unwrap(),
        );
        let request = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let key = |secret: &str| Key {
            access_key_id: "AKID".into(),
            secret: secret.into(),
            streams: vec!["*".into()],
            classes: vec![Class::Read],
        };
        let keys = Keys::new(vec![key("sekrit")]);
        let at = |seconds: i64| signed_at + chrono::Duration::seconds(seconds);
        for ok in [0, 900, -900] {
            assert!(keys.verify(&request, at(ok)).is_ok(), "{ok} s off");
        }
        for late in [901, -901] {
            assert!(
                matches!(keys.verify(&request, at(late)), Err(AuthError::BadSignature(m)) if m.contains("expired")),
                "{late} s off"
            );
        }
        let wrong = Keys::new(vec![key("other")]);
        assert!(matches!(
            wrong.verify(&request, at(0)),
            Err(AuthError::BadSignature(_))
        ));
        let changed = SignedRequest {
            body: br#"{"DeliveryStreamName":"t"}"#,
            ..request
        };
        assert!(matches!(
            keys.verify(&changed, at(0)),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn what_sign_signs_verify_accepts() {
        let body = br#"{"DeliveryStreamName":"s","Records":[]}"#;
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:4573".parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().unwrap(),
        );
        headers.insert(
            "x-amz-target",
            "Firehose_20150804.PutRecordBatch".parse().unwrap(),
        );
        let now: DateTime<Utc> = "2026-12-06T10:00:00Z".parse().unwrap();
        let unsigned = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let (date, authorization) = sign(
            &unsigned,
            &sha256_hex(body),
            "AKID",
            "sekrit",
            "us-east-1",
            now,
        );
        headers.insert("x-amz-date", date.parse().unwrap());
        headers.insert("authorization", authorization.parse().unwrap());
        let signed = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let keys = Keys::new(vec![Key {
            access_key_id: "AKID".into(),
            secret: "sekrit".into(),
            streams: vec!["*".into()],
            classes: vec![Class::Put],
        }]);
        assert!(keys.verify(&signed, now).is_ok());
    }

    /// What the headers alone must show before a body is read: the operation signed, each of
    /// the headers that steer the request once, and no more signed header bytes than a bound.
    #[test]
    fn headers_checked_before_the_body() {
        let keys = Keys::new(vec![Key {
            access_key_id: "AKID".into(),
            secret: "s".into(),
            streams: vec!["*".into()],
            classes: vec![Class::Put],
        }]);
        let now: DateTime<Utc> = "2026-12-06T10:00:00Z".parse().unwrap();
        let with = |signed: &str, extra: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            h.insert("host", "x".parse().unwrap());
            h.insert("x-amz-date", "20261206T100000Z".parse().unwrap());
            h.insert(
                "x-amz-target",
                "Firehose_20150804.PutRecord".parse().unwrap(),
            );
            h.insert(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=AKID/20261206/r/firehose/aws4_request, SignedHeaders={signed}, Signature={}", "0".repeat(64))
                    .parse()
                    .unwrap(),
            );
            for (k, v) in extra {
                h.append(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        assert!(
            keys.check_headers(&with("host;x-amz-date;x-amz-target", &[]), now)
                .is_ok()
        );
        let unsigned_target = with("host;x-amz-date", &[]);
        assert!(matches!(
            keys.check_headers(&unsigned_target, now),
            Err(AuthError::Incomplete(m)) if m.contains("x-amz-target")
        ));
        let twice = with(
            "host;x-amz-date;x-amz-target",
            &[("x-amz-target", "Firehose_20150804.DeleteDeliveryStream")],
        );
        assert!(matches!(
            keys.check_headers(&twice, now),
            Err(AuthError::Incomplete(_))
        ));
        // A signed header far larger than any real one: refused, not hashed.
        let big = "v".repeat(70 * 1024);
        let headers = with("big;host;x-amz-date;x-amz-target", &[("big", &big)]);
        let request = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        assert!(matches!(
            keys.verify(&request, now),
            Err(AuthError::Incomplete(m)) if m.contains("too large")
        ));
    }

    #[test]
    fn patterns_and_grants() {
        for (p, n, ok) in [
            ("*", "anything", true),
            ("game-*", "game-events", true),
            ("game-*", "gamers", false),
            ("*-events", "game-events", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "acb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(matches_pattern(p, n), ok, "{p} {n}");
        }
        let key = Key {
            access_key_id: "k".into(),
            secret: "s".into(),
            streams: vec!["game-*".into()],
            classes: vec![Class::Put],
        };
        let grant = Grant::Key(&key);
        assert!(grant.stream("PutRecordBatch", "game-events").is_ok());
        assert!(grant.stream("PutRecordBatch", "billing").is_err());
        assert!(grant.stream("DeleteDeliveryStream", "game-events").is_err());
        assert!(grant.class("ListDeliveryStreams").is_err());
        assert!(Grant::Anyone.stream("DeleteDeliveryStream", "x").is_ok());
    }

    #[test]
    fn malformed_headers_are_incomplete_not_panics() {
        for h in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=a/b/c",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host;x-amz-date, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=x-amz-date;host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "Basic abc",
        ] {
            assert!(
                matches!(parse_authorization(h), Err(AuthError::Incomplete(_))),
                "{h}"
            );
        }
        let scope = "Credential=a/20261206/r/firehose/aws4_request";
        let sig = "0".repeat(64);
        let upper =
            format!("AWS4-HMAC-SHA256 {scope}, SignedHeaders=Host;x-amz-date, Signature={sig}");
        assert!(matches!(
            parse_authorization(&upper),
            Err(AuthError::Incomplete(_))
        ));
        let twice = format!(
            "AWS4-HMAC-SHA256 {scope}, SignedHeaders=host;x-amz-date, Signature={sig}, Signature={sig}"
        );
        assert!(
            matches!(parse_authorization(&twice), Err(AuthError::Incomplete(m)) if m.contains("more than once"))
        );
        let many: Vec<String> = (0..33).map(|i| format!("h{i:02}")).collect();
        let many = format!(
            "AWS4-HMAC-SHA256 {scope}, SignedHeaders={}, Signature={sig}",
            many.join(";")
        );
        assert!(
            matches!(parse_authorization(&many), Err(AuthError::Incomplete(m)) if m.contains("too many"))
        );
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("a%2Fb%zz"), b"a/b%zz");
        assert_eq!(percent_decode("%+1"), b"%+1");
        // Not UTF-8: encoded back byte for byte, never as U+FFFD.
        assert_eq!(uri_encode(&percent_decode("a%FE")), "a%FE");
        assert_ne!(canonical_query("a=%FE"), canonical_query("a=%EF%BF%BD"));
    }
}
