//! A local Okta org for the okta provider's tests: the Management API's
//! wire format as Okta documents it (and as its Python SDK reads it, which
//! `okta_sdk_reads_the_fixture` checks).
//!
//! - `GET /api/v1/users` (`limit`, `after`, `search`), `/api/v1/users/{id}`,
//!   `/api/v1/groups`, `/api/v1/groups/{id}/users`: JSON arrays (or the
//!   object), ordered by id, paged by `after` with `Link: <…>; rel="self"`
//!   and `rel="next"` headers. The listing without `search` leaves
//!   DEPROVISIONED users out; `search` covers every status and understands
//!   `eq` / `gt` on `status`, `id`, `lastUpdated` and `profile.*`, with
//!   `and`, `or` and parentheses.
//! - `Authorization: SSWS <token>`, or `Bearer <access token>` issued by
//!   `POST /oauth2/v1/token` for a client assertion whose RS256 signature,
//!   issuer, subject, audience and expiry it checks (RFC 7523).
//! - Errors as Okta sends them (`errorCode`, `errorSummary`, `errorLink`,
//!   `errorId`, `errorCauses`): E0000011 (401), E0000007 (404), E0000047
//!   (429), E0000031 (400, a search it cannot read).
//! - Rate limits: every answer carries `Date`, `X-Rate-Limit-Limit`,
//!   `X-Rate-Limit-Remaining` and `X-Rate-Limit-Reset` (UTC epoch seconds)
//!   of a bucket that refills every wall-clock second (Okta's refills every
//!   minute: the same protocol, quicker); a request past the bucket is a
//!   429, and `refuse_next` makes the next ones 429 whatever the bucket
//!   holds (another client took the rest).
//! - `dead`: every request's connection is closed without an answer.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The test key of `src/connectors/okta_test_key.pem`, PKCS#8 PEM.
pub const TEST_KEY: &str = include_str!("../../../src/connectors/okta_test_key.pem");

/// A change to the org, made while a test's sync reads it.
pub type Change = Box<dyn FnOnce(&mut State) + Send>;

pub struct Group {
    pub json: Value,
    pub members: BTreeSet<String>,
}

/// The org's data and behaviour; tests change it through [`OktaOrg::with`].
pub struct State {
    pub base: String,
    pub users: BTreeMap<String, Value>,
    pub groups: BTreeMap<String, Group>,
    /// The API token accepted after `SSWS`.
    pub token: String,
    /// The service app allowed to get access tokens, and its public key.
    pub client_id: Option<String>,
    public_key: Vec<u8>,
    access_tokens: HashSet<String>,
    /// Requests per second (0: unlimited, reported as 600).
    pub bucket: u64,
    used: u64,
    window: i64,
    pub refuse_next: usize,
    pub served_429: usize,
    pub dead: bool,
    /// Dies (as `dead`) once this many requests were answered.
    pub die_after: Option<usize>,
    /// A change made once this many requests were answered (someone at
    /// the org acting while a sync reads it).
    pub after_requests: Option<(usize, Change)>,
    /// Each request as `METHOD path?query`.
    pub requests: Vec<String>,
    last_stamp: Timestamp,
    next_id: u64,
}

impl State {
    /// A timestamp for a change: now, and always later than the last one.
    pub fn stamp(&mut self) -> String {
        let now = Timestamp::now().max(self.last_stamp + jiff::SignedDuration::from_millis(1));
        self.last_stamp = now;
        now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:0>17}", self.next_id)
    }

    /// Adds a user as Okta's create-user API leaves one; returns its id.
    pub fn add_user(&mut self, login: &str, first: &str, last: &str, status: &str) -> String {
        let id = self.new_id("00u");
        let now = self.stamp();
        let user = json!({
            "id": id,
            "status": status,
            "created": now,
            "activated": if status == "ACTIVE" { Value::from(now.clone()) } else { Value::Null },
            "statusChanged": null,
            "lastLogin": null,
            "lastUpdated": now,
            "passwordChanged": null,
            "type": {"id": "oty1fixture0000000001"},
            "profile": {
                "firstName": first,
                "lastName": last,
                "mobilePhone": null,
                "secondEmail": null,
                "login": login,
                "email": login,
                "department": "Engineering",
            },
            "credentials": {"provider": {"type": "OKTA", "name": "OKTA"}},
            "_links": {"self": {"href": format!("{}/api/v1/users/{id}", self.base)}},
        });
        self.users.insert(id.clone(), user);
        id
    }

    /// Changes a user's profile (and its lastUpdated).
    pub fn update_profile(&mut self, id: &str, change: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let now = self.stamp();
        let user = self.users.get_mut(id).expect("a fixture user");
        change(user["profile"].as_object_mut().expect("a profile"));
        user["lastUpdated"] = json!(now);
    }

    /// A lifecycle change: status, statusChanged and lastUpdated move.
    pub fn set_status(&mut self, id: &str, status: &str) {
        let now = self.stamp();
        let user = self.users.get_mut(id).expect("a fixture user");
        user["status"] = json!(status);
        user["statusChanged"] = json!(now);
        user["lastUpdated"] = json!(now);
    }

    /// Deletes a user (and its memberships, as Okta does).
    pub fn delete_user(&mut self, id: &str) {
        self.users.remove(id);
        let now = self.stamp();
        for group in self.groups.values_mut() {
            if group.members.remove(id) {
                group.json["lastMembershipUpdated"] = json!(now);
            }
        }
    }

    pub fn add_group(&mut self, name: &str) -> String {
        let id = self.new_id("00g");
        let now = self.stamp();
        let json = json!({
            "id": id,
            "created": now,
            "lastUpdated": now,
            "lastMembershipUpdated": now,
            "objectClass": ["okta:user_group"],
            "type": "OKTA_GROUP",
            "profile": {"name": name, "description": format!("The {name} group")},
            "_links": {
                "users": {"href": format!("{}/api/v1/groups/{id}/users", self.base)},
                "apps": {"href": format!("{}/api/v1/groups/{id}/apps", self.base)},
            },
        });
        self.groups.insert(id.clone(), Group { json, members: BTreeSet::new() });
        id
    }

    pub fn add_member(&mut self, group: &str, user: &str) {
        let now = self.stamp();
        let group = self.groups.get_mut(group).expect("a fixture group");
        group.members.insert(user.to_string());
        group.json["lastMembershipUpdated"] = json!(now);
    }

    pub fn remove_member(&mut self, group: &str, user: &str) {
        let now = self.stamp();
        let group = self.groups.get_mut(group).expect("a fixture group");
        group.members.remove(user);
        group.json["lastMembershipUpdated"] = json!(now);
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.requests.iter().filter(|r| r.starts_with(prefix)).count()
    }
}

pub struct OktaOrg {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl OktaOrg {
    pub async fn start(token: &str) -> OktaOrg {
        idsync::tls::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let state = Arc::new(Mutex::new(State {
            base: base.clone(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            token: token.to_string(),
            client_id: None,
            public_key: public_key(TEST_KEY),
            access_tokens: HashSet::new(),
            bucket: 0,
            used: 0,
            window: 0,
            refuse_next: 0,
            served_429: 0,
            dead: false,
            die_after: None,
            after_requests: None,
            requests: Vec::new(),
            last_stamp: Timestamp::UNIX_EPOCH,
            next_id: 0,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let mut state = state.lock().expect("state");
                            if state.after_requests.as_ref().is_some_and(|(n, _)| state.requests.len() >= *n)
                                && let Some((_, change)) = state.after_requests.take()
                            {
                                change(&mut state);
                            }
                            if state.die_after.is_some_and(|n| state.requests.len() >= n) {
                                state.dead = true;
                            }
                            if state.dead {
                                return Err(std::io::Error::other("the org went away"));
                            }
                            Ok::<_, std::io::Error>(answer(&mut state, &parts, &body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OktaOrg { base, state }
    }

    /// Reads or changes the org.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("state"))
    }
}

/// The RSAPublicKey DER of a PKCS#8 PEM private key.
fn public_key(pem: &str) -> Vec<u8> {
    use ring::signature::KeyPair as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).expect("PEM");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("an RSA key");
    pair.public_key().as_ref().to_vec()
}

type Answer = hyper::Response<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>;

fn json_answer(status: u16, body: &Value, headers: &[(String, String)]) -> Answer {
    let mut builder = hyper::Response::builder().status(status).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())).map_err(|never: Infallible| match never {}).boxed())
        .expect("a response")
}

/// An Okta error body.
pub fn okta_error(code: &str, summary: &str) -> Value {
    json!({
        "errorCode": code,
        "errorSummary": summary,
        "errorLink": code,
        "errorId": format!("oae{}", fastrand::u64(..)),
        "errorCauses": [],
    })
}

fn answer(state: &mut State, parts: &http::request::Parts, body: &[u8]) -> Answer {
    let path = parts.uri.path().to_string();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    state.requests.push(format!("{} {}?{}", parts.method, path, parts.uri.query().unwrap_or_default()));

    // The rate limit: a bucket per wall-clock second.
    let now = Timestamp::now();
    if state.window != now.as_second() {
        state.window = now.as_second();
        state.used = 0;
    }
    state.used += 1;
    let limit = if state.bucket == 0 { 600 } else { state.bucket };
    let remaining = limit.saturating_sub(state.used);
    let over = state.bucket > 0 && state.used > state.bucket;
    let mut headers = vec![
        (
            "date".to_string(),
            jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&now).expect("date"),
        ),
        ("x-rate-limit-limit".to_string(), limit.to_string()),
        ("x-rate-limit-remaining".to_string(), if over { "0".to_string() } else { remaining.to_string() }),
        ("x-rate-limit-reset".to_string(), (state.window + 1).to_string()),
    ];
    if over || state.refuse_next > 0 {
        state.refuse_next = state.refuse_next.saturating_sub(1);
        state.served_429 += 1;
        headers[2].1 = "0".to_string();
        return json_answer(
            429,
            &okta_error("E0000047", "API call exceeded rate limit due to too many requests."),
            &headers,
        );
    }

    if parts.method == http::Method::POST && path == "/oauth2/v1/token" {
        return token(state, body, &headers);
    }
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    // Okta's documented form has a space after the scheme; its Python SDK
    // 3.x sends none (`SSWS<token>`) and works against Okta, so Okta takes
    // both.
    let authorized = auth.strip_prefix("SSWS").is_some_and(|t| t.trim_start() == state.token)
        || auth.strip_prefix("Bearer").is_some_and(|t| state.access_tokens.contains(t.trim_start()));
    if !authorized {
        return json_answer(401, &okta_error("E0000011", "Invalid token provided"), &headers);
    }
    if parts.method != http::Method::GET {
        return json_answer(
            405,
            &okta_error("E0000022", "The endpoint does not support the provided HTTP method"),
            &headers,
        );
    }
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(200).clamp(1, 200);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "users"] => {
            let search = match query.get("search").map(|s| parse_search(s)) {
                None => None,
                Some(Ok(expr)) => Some(expr),
                Some(Err(e)) => {
                    let mut body = okta_error("E0000031", "Invalid search.");
                    body["errorCauses"] = json!([{"errorSummary": e}]);
                    return json_answer(400, &body, &headers);
                }
            };
            let users: Vec<(String, Value)> = state
                .users
                .iter()
                .filter(|(_, u)| match &search {
                    Some(expr) => expr.matches(u),
                    None => u["status"] != "DEPROVISIONED",
                })
                .map(|(id, u)| (id.clone(), u.clone()))
                .collect();
            page(&state.base, &path, &query, users, limit, headers)
        }
        ["api", "v1", "users", id] => match state.users.get(*id) {
            Some(user) => json_answer(200, user, &headers),
            None => json_answer(
                404,
                &okta_error("E0000007", &format!("Not found: Resource not found: {id} (User)")),
                &headers,
            ),
        },
        ["api", "v1", "groups"] => {
            let groups = state.groups.iter().map(|(id, g)| (id.clone(), g.json.clone())).collect();
            page(&state.base, &path, &query, groups, limit, headers)
        }
        ["api", "v1", "groups", id, "users"] => match state.groups.get(*id) {
            Some(group) => {
                let members =
                    group.members.iter().filter_map(|m| state.users.get(m).map(|u| (m.clone(), u.clone()))).collect();
                page(&state.base, &path, &query, members, limit, headers)
            }
            None => json_answer(
                404,
                &okta_error("E0000007", &format!("Not found: Resource not found: {id} (UserGroup)")),
                &headers,
            ),
        },
        _ => json_answer(404, &okta_error("E0000022", "The endpoint does not exist"), &headers),
    }
}

/// One page of `items` (ordered by id) after `after`, with Okta's Link
/// headers.
fn page(
    base: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    items: Vec<(String, Value)>,
    limit: usize,
    mut headers: Vec<(String, String)>,
) -> Answer {
    let after = query.get("after").cloned().unwrap_or_default();
    let rest: Vec<(String, Value)> = items.into_iter().filter(|(id, _)| *id > after).collect();
    let more = rest.len() > limit;
    let page: Vec<Value> = rest.iter().take(limit).map(|(_, v)| v.clone()).collect();
    let link = |after: Option<&str>| {
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        if let Some(after) = after {
            pairs.append_pair("after", after);
        }
        pairs.append_pair("limit", &limit.to_string());
        if let Some(search) = query.get("search") {
            pairs.append_pair("search", search);
        }
        format!("{base}{path}?{}", pairs.finish())
    };
    headers.push(("link".to_string(), format!("<{}>; rel=\"self\"", link(query.get("after").map(String::as_str)))));
    if more && let Some((last, _)) = rest.get(limit - 1) {
        headers.push(("link".to_string(), format!("<{}>; rel=\"next\"", link(Some(last)))));
    }
    json_answer(200, &Value::Array(page), &headers)
}

/// `POST /oauth2/v1/token`: client credentials with a private-key JWT.
fn token(state: &mut State, body: &[u8], headers: &[(String, String)]) -> Answer {
    let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let refuse = |error: &str, description: &str| {
        json_answer(401, &json!({"error": error, "error_description": description}), headers)
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return json_answer(
            400,
            &json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."}),
            headers,
        );
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse("invalid_client", "Client authentication failed.");
    }
    let scopes: BTreeSet<&str> = form.get("scope").map(|s| s.split(' ').collect()).unwrap_or_default();
    if !scopes.is_subset(&BTreeSet::from(["okta.users.read", "okta.groups.read"])) || scopes.is_empty() {
        return json_answer(
            400,
            &json!({"error": "invalid_scope", "error_description": "The following scopes are not allowed."}),
            headers,
        );
    }
    let Some(assertion) = form.get("client_assertion") else {
        return refuse("invalid_client", "Client authentication failed.");
    };
    let audience = format!("{}/oauth2/v1/token", state.base);
    match check_assertion(assertion, &state.public_key, state.client_id.as_deref(), &audience) {
        Ok(()) => {
            let access = format!("eyJ.fixture.{}", fastrand::u64(..));
            state.access_tokens.insert(access.clone());
            let scope = scopes.into_iter().collect::<Vec<_>>().join(" ");
            json_answer(
                200,
                &json!({"token_type": "Bearer", "expires_in": 3600, "access_token": access, "scope": scope}),
                headers,
            )
        }
        Err(why) => refuse("invalid_client", &why),
    }
}

fn check_assertion(jwt: &str, public_key: &[u8], client_id: Option<&str>, audience: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else { return Err("not a JWT".into()) };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| "not base64url".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "not JSON".to_string())
    };
    let header = decode(header)?;
    if header["alg"] != "RS256" {
        return Err("The client_assertion token has an unsupported algorithm.".into());
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "a bad signature encoding".to_string())?;
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key);
    let signed = &jwt[..jwt.rfind('.').unwrap_or_default()];
    key.verify(signed.as_bytes(), &signature).map_err(|_| "The client_assertion signature is invalid.".to_string())?;
    let claims = decode(claims)?;
    let client_id = client_id.ok_or("no service app is configured")?;
    if claims["iss"] != client_id || claims["sub"] != client_id {
        return Err("The client_assertion token has an invalid issuer or subject.".into());
    }
    if claims["aud"] != audience {
        return Err(format!("The audience of the client_assertion token must be {audience}."));
    }
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    if exp <= Timestamp::now().as_second() || claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err("The client_assertion token is expired or has no jti.".into());
    }
    Ok(())
}

/// A search expression: the small part of Okta's search syntax the tests
/// and the connector use.
#[derive(Debug)]
pub enum Search {
    Compare { field: String, op: String, value: String },
    And(Box<Search>, Box<Search>),
    Or(Box<Search>, Box<Search>),
}

impl Search {
    fn matches(&self, user: &Value) -> bool {
        match self {
            Search::And(a, b) => a.matches(user) && b.matches(user),
            Search::Or(a, b) => a.matches(user) || b.matches(user),
            Search::Compare { field, op, value } => {
                let pointer = format!("/{}", field.replace('.', "/"));
                let Some(actual) = user.pointer(&pointer).and_then(Value::as_str) else { return false };
                match (op.as_str(), field.as_str()) {
                    ("eq", _) => actual == value,
                    ("gt", "lastUpdated" | "created") => {
                        match (actual.parse::<Timestamp>(), value.parse::<Timestamp>()) {
                            (Ok(a), Ok(v)) => a > v,
                            _ => false,
                        }
                    }
                    ("gt", _) => actual > value.as_str(),
                    _ => false,
                }
            }
        }
    }
}

fn parse_search(text: &str) -> Result<Search, String> {
    let tokens = tokenize(text)?;
    let mut at = 0;
    let expr = parse_or(&tokens, &mut at)?;
    if at != tokens.len() {
        return Err(format!("unexpected {:?}", tokens[at]));
    }
    Ok(expr)
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '(' | ')' => {
                tokens.push(c.to_string());
                chars.next();
            }
            '"' => {
                chars.next();
                let mut value = String::from("\"");
                loop {
                    match chars.next() {
                        Some('\\') => value.extend(chars.next()),
                        Some('"') => break,
                        Some(c) => value.push(c),
                        None => return Err("an unterminated string".into()),
                    }
                }
                tokens.push(value);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '(' || c == ')' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

fn parse_or(tokens: &[String], at: &mut usize) -> Result<Search, String> {
    let mut left = parse_and(tokens, at)?;
    while tokens.get(*at).is_some_and(|t| t == "or") {
        *at += 1;
        left = Search::Or(Box::new(left), Box::new(parse_and(tokens, at)?));
    }
    Ok(left)
}

fn parse_and(tokens: &[String], at: &mut usize) -> Result<Search, String> {
    let mut left = parse_term(tokens, at)?;
    while tokens.get(*at).is_some_and(|t| t == "and") {
        *at += 1;
        left = Search::And(Box::new(left), Box::new(parse_term(tokens, at)?));
    }
    Ok(left)
}

fn parse_term(tokens: &[String], at: &mut usize) -> Result<Search, String> {
    if tokens.get(*at).is_some_and(|t| t == "(") {
        *at += 1;
        let inner = parse_or(tokens, at)?;
        if tokens.get(*at).is_none_or(|t| t != ")") {
            return Err("a missing )".into());
        }
        *at += 1;
        return Ok(inner);
    }
    let (Some(field), Some(op), Some(value)) = (tokens.get(*at), tokens.get(*at + 1), tokens.get(*at + 2)) else {
        return Err("an incomplete comparison".into());
    };
    let Some(value) = value.strip_prefix('"') else { return Err(format!("{value} is not a quoted value")) };
    if !matches!(op.as_str(), "eq" | "gt") {
        return Err(format!("the operator {op} is not supported here"));
    }
    *at += 3;
    Ok(Search::Compare { field: field.clone(), op: op.clone(), value: value.to_string() })
}
