//! A GitHub REST and GraphQL fixture: one organisation, served on
//! 127.0.0.1 the way GitHub documents it — `Link` paging with `per_page`
//! and `page`, weak ETags and `304 Not Modified` to `If-None-Match`,
//! `X-RateLimit-*` headers on every answer, the 401 `Bad credentials`
//! body, the primary (403, `X-RateLimit-Remaining: 0`) and secondary (403,
//! `Retry-After`) rate-limit answers, GitHub App installation tokens for a
//! verified RS256 JWT, and the SAML identities' GraphQL connection. Every
//! exchange is logged for [`super::openapi`] to check.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::openapi::Exchange;

pub const ORG: &str = "acme";
pub const ORG_ID: u64 = 9_919;
/// GitHub's message for a secondary rate limit, as its documentation shows.
pub const SECONDARY_MESSAGE: &str = "You have exceeded a secondary rate limit. Please wait a few minutes before you \
                                     try again. If you reach out to GitHub Support for help, please include the \
                                     request ID DBD8:3C6E:1E8F9A:3D9E3B:6567A2B1.";

#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    pub login: String,
    pub admin: bool,
    pub two_factor: bool,
    /// The linked SAML identity's nameId (an e-mail) and names.
    pub saml: Option<(String, String, String)>,
}

impl Member {
    pub fn new(id: u64, login: &str) -> Member {
        Member { id, login: login.to_string(), admin: false, two_factor: true, saml: None }
    }
}

#[derive(Clone, Debug)]
pub struct Team {
    pub id: u64,
    pub slug: String,
    pub members: Vec<u64>,
}

/// A rate limit the fixture answers the next member listing request with.
#[derive(Clone, Copy, Debug)]
pub enum Throttle {
    /// 403 with `X-RateLimit-Remaining: 0`, reset this many seconds ahead.
    Primary { reset_in: i64 },
    /// 403 with `Retry-After` and GitHub's secondary message.
    Secondary { retry_after: u64 },
}

#[derive(Debug, Default)]
pub struct State {
    pub members: Vec<Member>,
    pub outside: Vec<Member>,
    pub teams: Vec<Team>,
    pub saml_enabled: bool,
    pub token: String,
    /// A GitHub App: its id, installation, public key (DER), and how long
    /// the installation tokens it issues live (seconds).
    pub app: Option<(u64, u64, Vec<u8>, i64)>,
    pub issued: Vec<String>,
    pub throttles: VecDeque<Throttle>,
    /// Close every connection without an answer from now on.
    pub dead: bool,
    /// Die (as `dead`) when the member listing's page N is asked for.
    pub die_at_members_page: Option<usize>,
    /// Remove this member once the first members page has been served.
    pub remove_after_first_page: Option<u64>,
    pub log: Vec<Exchange>,
    pub not_modified: usize,
    pub token_exchanges: usize,
}

pub struct GitHubFixture {
    pub base: String,
    pub state: Arc<Mutex<State>>,
}

impl GitHubFixture {
    pub async fn start(token: &str) -> GitHubFixture {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let state = Arc::new(Mutex::new(State { token: token.to_string(), ..State::default() }));
        let (s, b) = (state.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (s, b) = (s.clone(), b.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (s, b) = (s.clone(), b.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            {
                                let mut state = s.lock().expect("state");
                                let page = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                                    .find(|(k, _)| k == "page")
                                    .and_then(|(_, v)| v.parse::<usize>().ok());
                                let members = parts.uri.path() == format!("/orgs/{ORG}/members")
                                    && !parts.uri.query().unwrap_or_default().contains("role=")
                                    && !parts.uri.query().unwrap_or_default().contains("filter=");
                                if members && page.is_some() && page == state.die_at_members_page {
                                    state.dead = true;
                                }
                                if state.dead {
                                    return Err(std::io::Error::other("the GitHub fixture is down"));
                                }
                            }
                            Ok::<_, std::io::Error>(answer(&s, &b, &parts, &body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GitHubFixture { base, state }
    }

    pub fn with<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        change(&mut self.state.lock().expect("state"))
    }

    /// Every logged REST exchange checked against GitHub's description;
    /// returns how many were checked.
    pub fn assert_valid(&self) -> usize {
        let log = self.with(|s| s.log.clone());
        let spec = super::openapi::description();
        let problems: Vec<String> = log.iter().flat_map(|e| spec.check(e)).collect();
        assert!(problems.is_empty(), "the fixture left GitHub's description:\n{}", problems.join("\n"));
        log.len()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn user_json(base: &str, m: &Member) -> Value {
    let login = &m.login;
    json!({
        "login": login, "id": m.id, "node_id": format!("U_kgDO{:08}", m.id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", m.id), "gravatar_id": "",
        "url": format!("{base}/users/{login}"), "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{base}/users/{login}/followers"),
        "following_url": format!("{base}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{base}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{base}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{base}/users/{login}/subscriptions"),
        "organizations_url": format!("{base}/users/{login}/orgs"),
        "repos_url": format!("{base}/users/{login}/repos"),
        "events_url": format!("{base}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{base}/users/{login}/received_events"),
        "type": "User", "user_view_type": "public", "site_admin": false,
    })
}

fn public_user_json(base: &str, m: &Member) -> Value {
    let mut user = user_json(base, m);
    let extra = json!({
        "name": null, "company": null, "blog": "", "location": null, "email": null, "hireable": null, "bio": null,
        "public_repos": 2, "public_gists": 0, "followers": 1, "following": 0,
        "created_at": "2020-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    });
    if let (Some(user), Some(extra)) = (user.as_object_mut(), extra.as_object()) {
        user.extend(extra.clone());
    }
    user
}

fn org_json(base: &str) -> Value {
    json!({
        "login": ORG, "id": ORG_ID, "node_id": "O_kgDOAAAmrw", "url": format!("{base}/orgs/{ORG}"),
        "repos_url": format!("{base}/orgs/{ORG}/repos"), "events_url": format!("{base}/orgs/{ORG}/events"),
        "hooks_url": format!("{base}/orgs/{ORG}/hooks"), "issues_url": format!("{base}/orgs/{ORG}/issues"),
        "members_url": format!("{base}/orgs/{ORG}/members{{/member}}"),
        "public_members_url": format!("{base}/orgs/{ORG}/public_members{{/member}}"),
        "avatar_url": "https://avatars.githubusercontent.com/u/9919?v=4", "description": "Acme",
    })
}

fn team_json(base: &str, t: &Team) -> Value {
    json!({
        "id": t.id, "node_id": format!("T_kwDO{:08}", t.id), "name": t.slug.to_uppercase(), "slug": t.slug,
        "description": null, "privacy": "closed", "notification_setting": "notifications_enabled",
        "permission": "pull", "url": format!("{base}/organizations/{ORG_ID}/team/{}", t.id),
        "html_url": format!("https://github.com/orgs/{ORG}/teams/{}", t.slug),
        "members_url": format!("{base}/organizations/{ORG_ID}/team/{}/members{{/member}}", t.id),
        "repositories_url": format!("{base}/organizations/{ORG_ID}/team/{}/repos", t.id),
        "parent": null, "type": "organization",
    })
}

fn error_json(message: &str, status: u16) -> Value {
    json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()})
}

/// The answer to one request; logs the exchange.
fn answer(state: &Arc<Mutex<State>>, base: &str, parts: &http::request::Parts, body: &Bytes) -> hyper::Response<Body> {
    let mut s = state.lock().expect("state");
    let path = parts.uri.path().to_string();
    let query: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let request_body: Option<Value> = serde_json::from_slice(body).ok();
    let (status, headers, response) = route(&mut s, base, parts, &path, &query, request_body.as_ref());
    let (status, headers, response) = conditional(&mut s, parts, status, headers, response);
    if path != "/graphql" {
        s.log.push(Exchange {
            method: parts.method.to_string(),
            path,
            query,
            request_body,
            status,
            response_body: response.clone(),
        });
    }
    let mut builder =
        hyper::Response::builder().status(status).header("content-type", "application/json; charset=utf-8");
    let used = s.log.len() as i64;
    if !headers.iter().any(|(n, _)| n == "x-ratelimit-remaining") {
        builder = builder
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", (4999 - used).max(1).to_string())
            .header("x-ratelimit-reset", (now() + 3600).to_string())
            .header("x-ratelimit-used", used.to_string())
            .header("x-ratelimit-resource", "core");
    }
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let bytes = response.map(|r| Bytes::from(r.to_string())).unwrap_or_default();
    builder.body(Full::new(bytes).boxed()).expect("a response")
}

/// Weak ETags over the body, and 304 to a matching `If-None-Match`.
fn conditional(
    s: &mut State,
    parts: &http::request::Parts,
    status: u16,
    mut headers: Vec<(String, String)>,
    response: Option<Value>,
) -> (u16, Vec<(String, String)>, Option<Value>) {
    if parts.method != http::Method::GET || status != 200 {
        return (status, headers, response);
    }
    let Some(body) = &response else { return (status, headers, response) };
    let digest = Sha256::digest(body.to_string().as_bytes());
    let etag = format!("W/\"{}\"", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
    headers.push(("etag".into(), etag.clone()));
    let asked = parts.headers.get("if-none-match").and_then(|v| v.to_str().ok());
    if asked == Some(etag.as_str()) {
        s.not_modified += 1;
        return (304, headers, None);
    }
    (status, headers, response)
}

type Answer = (u16, Vec<(String, String)>, Option<Value>);

fn route(
    s: &mut State,
    base: &str,
    parts: &http::request::Parts,
    path: &str,
    query: &[(String, String)],
    body: Option<&Value>,
) -> Answer {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if let ["app", "installations", id, "access_tokens"] = segments.as_slice() {
        return installation_token(s, &auth, id);
    }
    let presented = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("token ")).unwrap_or_default();
    if presented != s.token && !s.issued.iter().any(|t| t == presented) {
        return (401, vec![], Some(error_json("Bad credentials", 401)));
    }
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let listing = segments.as_slice() == ["orgs", ORG, "members"];
    if listing
        && param("role").is_none()
        && param("filter").is_none()
        && let Some(throttle) = s.throttles.pop_front()
    {
        return match throttle {
            Throttle::Primary { reset_in } => (
                403,
                vec![
                    ("x-ratelimit-limit".into(), "5000".into()),
                    ("x-ratelimit-remaining".into(), "0".into()),
                    ("x-ratelimit-used".into(), "5000".into()),
                    ("x-ratelimit-reset".into(), (now() + reset_in).to_string()),
                    ("x-ratelimit-resource".into(), "core".into()),
                ],
                Some(json!({
                    "message": "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID DBD8:3C6E:1E8F9A:3D9E3B:6567A2B1.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    "status": "403",
                })),
            ),
            Throttle::Secondary { retry_after } => (
                403,
                vec![("retry-after".into(), retry_after.to_string())],
                Some(json!({
                    "message": SECONDARY_MESSAGE,
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                    "status": "403",
                })),
            ),
        };
    }
    match (parts.method.as_str(), segments.as_slice()) {
        ("POST", ["graphql"]) => (200, vec![], Some(graphql(s, body))),
        ("GET", ["orgs", org, "members"]) if *org == ORG => {
            let mut users: Vec<&Member> = s.members.iter().collect();
            if param("role") == Some("admin") {
                users.retain(|m| m.admin);
            }
            if param("filter") == Some("2fa_disabled") {
                users.retain(|m| !m.two_factor);
            }
            let users: Vec<Value> = users.iter().map(|m| user_json(base, m)).collect();
            let answer = paged(base, path, query, users);
            if param("role").is_none()
                && param("filter").is_none()
                && param("page").is_none_or(|p| p == "1")
                && let Some(id) = s.remove_after_first_page.take()
            {
                s.members.retain(|m| m.id != id);
            }
            answer
        }
        ("GET", ["orgs", org, "outside_collaborators"]) if *org == ORG => {
            let mut users: Vec<&Member> = s.outside.iter().collect();
            if param("filter") == Some("2fa_disabled") {
                users.retain(|m| !m.two_factor);
            }
            let users: Vec<Value> = users.iter().map(|m| user_json(base, m)).collect();
            paged(base, path, query, users)
        }
        ("GET", ["orgs", org, "teams"]) if *org == ORG => {
            let teams: Vec<Value> = s.teams.iter().map(|t| team_json(base, t)).collect();
            paged(base, path, query, teams)
        }
        ("GET", ["orgs", org, "teams", slug, "members"]) if *org == ORG => {
            let Some(team) = s.teams.iter().find(|t| t.slug == *slug) else {
                return (404, vec![], Some(error_json("Not Found", 404)));
            };
            let users: Vec<Value> =
                s.members.iter().filter(|m| team.members.contains(&m.id)).map(|m| user_json(base, m)).collect();
            paged(base, path, query, users)
        }
        ("GET", ["user", id]) => {
            let found = s.members.iter().chain(&s.outside).find(|m| m.id.to_string() == *id);
            match found {
                Some(m) => (200, vec![], Some(public_user_json(base, m))),
                None => (404, vec![], Some(error_json("Not Found", 404))),
            }
        }
        ("GET", ["orgs", org, "memberships", login]) if *org == ORG => {
            match s.members.iter().find(|m| m.login == *login) {
                Some(m) => (
                    200,
                    vec![],
                    Some(json!({
                        "url": format!("{base}/orgs/{ORG}/memberships/{login}"), "state": "active",
                        "role": if m.admin { "admin" } else { "member" },
                        "organization_url": format!("{base}/orgs/{ORG}"),
                        "organization": org_json(base), "user": user_json(base, m),
                    })),
                ),
                None => (404, vec![], Some(error_json("Not Found", 404))),
            }
        }
        _ => (404, vec![], Some(error_json("Not Found", 404))),
    }
}

/// One page of `items` as GitHub pages: `per_page` (default 30, at most
/// 100) and `page` (from 1), with `Link` first/prev/next/last.
fn paged(base: &str, path: &str, query: &[(String, String)], items: Vec<Value>) -> Answer {
    let param = |name: &str| query.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<usize>().ok());
    let per_page = param("per_page").unwrap_or(30).clamp(1, 100);
    let page = param("page").unwrap_or(1).max(1);
    let last = items.len().div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let url = |n: usize| {
        let mut pairs: Vec<(String, String)> = query.iter().filter(|(k, _)| k != "page").cloned().collect();
        pairs.push(("page".into(), n.to_string()));
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        format!("{base}{path}?{query}")
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("<{}>; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        links.push(format!("<{}>; rel=\"next\"", url(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"first\"", url(1)));
    }
    let headers = if links.is_empty() { vec![] } else { vec![("link".to_string(), links.join(", "))] };
    (200, headers, Some(Value::Array(page_items)))
}

/// `organization.samlIdentityProvider.externalIdentities`, paged by
/// `first` / `after` (the cursor is the index to start at).
fn graphql(s: &State, body: Option<&Value>) -> Value {
    let variables = body.and_then(|b| b.get("variables")).cloned().unwrap_or_default();
    if variables.get("org").and_then(Value::as_str) != Some(ORG) {
        return json!({"data": {"organization": null}, "errors": [{"type": "NOT_FOUND", "path": ["organization"],
                       "message": "Could not resolve to an Organization with the login of 'x'."}]});
    }
    if !s.saml_enabled {
        return json!({"data": {"organization": {"samlIdentityProvider": null}}});
    }
    let first = variables.get("first").and_then(Value::as_u64).unwrap_or(100).clamp(1, 100) as usize;
    let start: usize = variables.get("after").and_then(Value::as_str).and_then(|a| a.parse().ok()).unwrap_or(0);
    let linked: Vec<&Member> = s.members.iter().filter(|m| m.saml.is_some()).collect();
    let nodes: Vec<Value> = linked
        .iter()
        .skip(start)
        .take(first)
        .map(|m| {
            let (name_id, given, family) = m.saml.clone().unwrap_or_default();
            json!({"samlIdentity": {"nameId": name_id, "emails": [{"value": name_id, "primary": true}],
                                    "givenName": given, "familyName": family},
                   "user": {"login": m.login, "databaseId": m.id}})
        })
        .collect();
    let end = start + nodes.len();
    json!({"data": {"organization": {"samlIdentityProvider": {"externalIdentities": {
        "pageInfo": {"hasNextPage": end < linked.len(), "endCursor": end.to_string()},
        "nodes": nodes,
    }}}}})
}

/// `POST /app/installations/{id}/access_tokens` for a JWT the App's key
/// signed (RS256), issued within GitHub's limits.
fn installation_token(s: &mut State, auth: &str, installation: &str) -> Answer {
    let refused = |message: &str| (401, vec![], Some(error_json(message, 401)));
    let Some((app_id, installation_id, public_key, lifetime)) = s.app.clone() else {
        return refused("A JSON web token could not be decoded");
    };
    let Some(jwt) = auth.strip_prefix("Bearer ") else { return refused("A JSON web token could not be decoded") };
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (Ok(claims), Ok(signature)) =
        (b64.decode(parts.get(1).copied().unwrap_or_default()), b64.decode(parts.get(2).copied().unwrap_or_default()))
    else {
        return refused("A JSON web token could not be decoded");
    };
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key);
    let signed = format!("{}.{}", parts[0], parts[1]);
    if key.verify(signed.as_bytes(), &signature).is_err() {
        return refused("A JSON web token could not be decoded");
    }
    let claims: Value = serde_json::from_slice(&claims).unwrap_or_default();
    let (iat, exp) = (claims["iat"].as_i64().unwrap_or(0), claims["exp"].as_i64().unwrap_or(0));
    if claims["iss"].as_u64() != Some(app_id) || iat > now() || exp <= now() || exp - iat > 600 {
        return refused("'Expiration time' claim ('exp') is too far in the future");
    }
    if installation != installation_id.to_string() {
        return (404, vec![], Some(error_json("Not Found", 404)));
    }
    s.token_exchanges += 1;
    let token = format!("ghs_installation{:04}", s.token_exchanges);
    s.issued.push(token.clone());
    let expires = jiff::Timestamp::from_second(now() + lifetime).expect("a time").to_string();
    (
        201,
        vec![],
        Some(json!({"token": token, "expires_at": expires, "permissions": {"members": "read"},
                              "repository_selection": "all"})),
    )
}
