//! Unit tests of the github provider: its pure parts, and the connector
//! against small servers for what the end-to-end fixture does not show.

use serde_json::json;

use super::*;
use crate::connectors::testing::{fast_http as fast, handler, respond, serve, token_inputs};

fn spec(api_url: &str, page_size: u32) -> (ConnectionSpec, GitHubSettings) {
    let spec: ConnectionSpec = serde_json::from_value(json!({
        "category": "VersionControl",
        "provider": {"type": "github", "github": {"organization": "acme", "apiUrl": api_url}},
        "credentialsSecretRef": {"name": "gh"},
        "network": {"allowLoopback": true},
        "pageSize": page_size,
    }))
    .expect("a valid spec");
    let settings = match &spec.provider {
        idsync_api::Provider::GitHub(settings) => settings.clone(),
        other => panic!("not github: {other:?}"),
    };
    (spec, settings)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

#[test]
fn the_next_link_is_found_among_the_others() {
    let link = r#"<https://api.github.com/orgs/acme/members?per_page=2&page=1>; rel="prev", <https://api.github.com/orgs/acme/members?per_page=2&page=3>; rel="next", <https://api.github.com/orgs/acme/members?per_page=2&page=9>; rel="last""#;
    assert_eq!(
        next_link(&headers(&[("link", link)])).as_deref(),
        Some("https://api.github.com/orgs/acme/members?per_page=2&page=3")
    );
    let last = r#"<https://api.github.com/orgs/acme/members?page=1>; rel="first""#;
    assert_eq!(next_link(&headers(&[("link", last)])), None);
    assert_eq!(next_link(&HeaderMap::new()), None);
}

#[test]
fn rate_limits_are_told_apart_from_refusals() {
    let soon = (now_seconds() + 5).to_string();
    let (limit, wait) = throttled(
        StatusCode::FORBIDDEN,
        &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &soon)]),
        br#"{"message":"API rate limit exceeded for user ID 1."}"#,
    )
    .expect("a primary limit");
    assert_eq!(limit, Limit::Primary);
    assert!(wait >= Duration::from_secs(4) && wait <= Duration::from_secs(5), "{wait:?}");

    let secondary =
        br#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#;
    assert_eq!(
        throttled(StatusCode::FORBIDDEN, &headers(&[("retry-after", "7")]), secondary),
        Some((Limit::Secondary, Duration::from_secs(7)))
    );
    assert_eq!(
        throttled(StatusCode::FORBIDDEN, &headers(&[("x-ratelimit-remaining", "12")]), secondary),
        Some((Limit::Secondary, SECONDARY_DEFAULT_WAIT)),
        "a secondary limit without Retry-After waits a minute"
    );
    assert_eq!(
        throttled(
            StatusCode::FORBIDDEN,
            &headers(&[("x-ratelimit-remaining", "4999")]),
            br#"{"message":"Resource not accessible by integration"}"#
        ),
        None,
        "a 403 that is no rate limit is a refusal"
    );
    // A reset in the past still waits a moment, never a negative time.
    let past = (now_seconds() - 100).to_string();
    let (_, wait) = throttled(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &past)]),
        b"",
    )
    .unwrap();
    assert_eq!(wait, Duration::from_secs(1));
}

#[test]
fn maps_a_member_with_saml_2fa_and_teams() {
    let user = json!({"login": "octocat", "id": 583231, "node_id": "MDQ6VXNlcjU4MzIzMQ==", "type": "User",
                      "site_admin": false, "name": "ignored", "email": "ignored@example.com"});
    let mut context = Context { two_factor_disabled: Some(HashSet::from([583231])), ..Default::default() };
    context.teams.insert(583231, vec!["web".into(), "api".into()]);
    context.saml.insert(
        583231,
        saml_identity(&json!({"nameId": "mona@acme.example", "emails": [{"value": "old@acme.example"},
                             {"value": "mona@acme.example", "primary": true}], "givenName": "Mona", "familyName": "Lisa"})),
    );
    let account = map_user(&user, "admin", &context).unwrap();
    assert_eq!(account.id, "583231");
    assert_eq!(account.username.as_deref(), Some("octocat"));
    assert_eq!(account.email.as_deref(), Some("mona@acme.example"));
    assert_eq!(account.display_name.as_deref(), Some("Mona Lisa"));
    assert!(account.enabled);
    assert_eq!(account.groups, ["api", "web"]);
    assert_eq!(account.attributes["role"], "admin");
    assert_eq!(account.attributes["twoFactorEnabled"], false);
    assert_eq!(account.attributes["samlNameId"], "mona@acme.example");
    assert_eq!(account.attributes["nodeId"], "MDQ6VXNlcjU4MzIzMQ==");

    // No SAML, 2FA unknown: no e-mail and no 2FA attribute, not a guess.
    let account = map_user(&user, "member", &Context::default()).unwrap();
    assert_eq!((account.email, account.display_name), (None, None));
    assert!(!account.attributes.contains_key("twoFactorEnabled"));
    // A nameId that is an e-mail stands in for a missing e-mail list.
    assert_eq!(saml_identity(&json!({"nameId": "x@acme.example"})).email.as_deref(), Some("x@acme.example"));
    assert_eq!(saml_identity(&json!({"nameId": "x-1234"})).email, None);
    assert!(map_user(&json!({"login": "no-id"}), "member", &Context::default()).is_err());
}

#[test]
fn credentials_are_checked_and_never_shown() {
    let (spec, settings) = spec("http://127.0.0.1:1", 10);
    let e = GitHubConnector::new(&spec, &settings, &ProviderInputs::default()).unwrap_err();
    assert!(e.to_string().starts_with("spec.credentialsSecretRef: key \"token\" missing"), "{e}");
    let mut inputs = token_inputs("ghp_SECRET");
    inputs.secret.insert("privateKey".into(), b"x".to_vec());
    let e = GitHubConnector::new(&spec, &settings, &inputs).unwrap_err();
    assert!(e.to_string().contains("both"), "{e}");
    let mut app = ProviderInputs::default();
    app.secret.insert("privateKey".into(), include_bytes!("github_test_key.pem").to_vec());
    let e = GitHubConnector::new(&spec, &settings, &app).unwrap_err();
    assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"appId\" missing");
    app.secret.insert("appId".into(), b"42".to_vec());
    app.secret.insert("installationId".into(), b"7".to_vec());
    let connector = GitHubConnector::new(&spec, &settings, &app).unwrap();
    let shown = format!("{connector:?}");
    assert!(!shown.contains("MII") && !shown.contains("SECRET"), "{shown}");
    let connector = GitHubConnector::new(&spec, &settings, &token_inputs("ghp_SECRET")).unwrap();
    assert!(!format!("{connector:?}").contains("SECRET"));
}

#[test]
fn enterprise_server_has_graphql_beside_its_rest_root() {
    let inputs = token_inputs("t");
    let (ghe, settings) = spec("https://ghe.acme.example/api/v3/", 10);
    let connector = GitHubConnector::new(&ghe, &settings, &inputs).unwrap();
    assert_eq!(connector.graphql.as_str(), "https://ghe.acme.example/api/graphql");
    assert_eq!(
        connector.listing(&["orgs", "acme", "members"], &[("role", "admin")]).unwrap().as_str(),
        "https://ghe.acme.example/api/v3/orgs/acme/members?role=admin&per_page=10"
    );
    let (dotcom, settings) = spec("https://api.github.com", 500);
    let connector = GitHubConnector::new(&dotcom, &settings, &inputs).unwrap();
    assert_eq!(connector.graphql.as_str(), "https://api.github.com/graphql");
    assert_eq!(connector.per_page, 100, "GitHub serves at most 100 a page");
}

/// A page whose `Link` points at another host would take the token there:
/// the read fails instead.
#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed() {
    let server = serve(handler(|_, parts| {
        Box::pin(async move {
            let body = match parts.uri.path() {
                "/graphql" => json!({"data": {"organization": {"samlIdentityProvider": null}}}).to_string(),
                "/orgs/acme/members" if parts.uri.query().unwrap_or_default().contains("role=admin") => "[]".into(),
                "/orgs/acme/members" if parts.uri.query().unwrap_or_default().contains("filter=") => "[]".into(),
                "/orgs/acme/members" => {
                    return respond(
                        200,
                        &[("link", r#"<https://evil.example/steal?page=2>; rel="next""#)],
                        r#"[{"login":"a","id":1}]"#,
                    );
                }
                _ => "[]".into(),
            };
            respond(200, &[("content-type", "application/json")], body)
        })
    }))
    .await;
    let (spec, mut settings) = spec(&server.base, 10);
    settings.include_teams = false;
    let mut connector = GitHubConnector::with_http_settings(&spec, &settings, &token_inputs("t"), fast()).unwrap();
    connector.begin(SyncMode::Full, None).await.unwrap();
    let e = connector.next_page().await.unwrap_err();
    assert!(e.to_string().contains("is not on the API's host"), "{e}");
}

/// A 403 that is no rate limit stalls as Unauthorized with GitHub's
/// message; a refused 2FA filter only leaves the 2FA attribute out.
#[tokio::test]
async fn refusals_are_unauthorized_but_a_refused_2fa_filter_is_a_note() {
    let server = serve(handler(|_, parts| {
        Box::pin(async move {
            let query = parts.uri.query().unwrap_or_default().to_string();
            match parts.uri.path() {
                "/graphql" => respond(
                    200,
                    &[],
                    json!({"data": {"organization": {"samlIdentityProvider": null}},
                           "errors": [{"type": "FORBIDDEN", "message": "needs admin:org"}]})
                    .to_string(),
                ),
                "/orgs/acme/members" if query.contains("filter=2fa_disabled") => respond(
                    422,
                    &[],
                    r#"{"message":"Only owners can use this filter.","documentation_url":"https://docs.github.com/rest"}"#,
                ),
                "/orgs/acme/members" => respond(200, &[], r#"[{"login":"a","id":1,"type":"User","site_admin":false}]"#),
                _ => respond(
                    403,
                    &[("x-ratelimit-remaining", "4000")],
                    r#"{"message":"Resource not accessible by personal access token","status":"403"}"#,
                ),
            }
        })
    }))
    .await;
    let (spec, mut settings) = spec(&server.base, 10);
    settings.include_teams = false;
    let mut connector = GitHubConnector::with_http_settings(&spec, &settings, &token_inputs("t0k"), fast()).unwrap();
    connector.begin(SyncMode::Full, None).await.unwrap();
    let page = connector.next_page().await.unwrap().unwrap();
    assert_eq!(page.accounts.len(), 1);
    assert!(!page.accounts[0].attributes.contains_key("twoFactorEnabled"));
    assert!(connector.next_page().await.unwrap().is_none());
    let notes = connector.notes().join("; ");
    assert!(notes.contains("two-factor status not read") && notes.contains("SAML identities not read"), "{notes}");

    settings.include_teams = true;
    let mut connector = GitHubConnector::with_http_settings(&spec, &settings, &token_inputs("t0k"), fast()).unwrap();
    connector.begin(SyncMode::Full, None).await.unwrap();
    let e = connector.next_page().await.unwrap_err();
    assert!(e.is_stalled(), "{e:?}");
    assert_eq!(e.reason(), "Unauthorized");
    assert!(e.to_string().ends_with(
        "/orgs/acme/teams?per_page=10 answered HTTP 403 Forbidden: Resource not accessible by personal access token \
         (check the credentials' permissions)"
    ), "{e}");
}
