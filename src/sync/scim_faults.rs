//! The sync engine against SCIM servers whose listings are short or never
//! end: each such read either fails (the store as it was) or, where the
//! listing skipped someone, is caught by asking for each unlisted user, so
//! nobody live is deleted. A fake server per fault (connectors::testing).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::connectors::scim::{ERROR_SCHEMA, ScimConnector};
use crate::connectors::testing::{fast_http, handler, respond, scim_spec, serve, token_inputs};
use crate::model::{RunOutcome, Trigger};
use idsync_api::SyncMode;

/// How the fake SCIM server below misbehaves.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Pages honestly.
    None,
    /// Announces totalResults 20 of its 25 users, and lists only 20.
    Undercounts,
    /// Answers an empty page at startIndex 21 although totalResults is 25.
    EmptyEarly,
    /// Ignores startIndex and leaves out totalResults: the first page, forever.
    IgnoresStartIndex,
    /// The same for `/Groups`.
    GroupsIgnoreStartIndex,
}

/// A SCIM server of 25 users `u01`..`u25`, `/Users/{id}` included.
async fn fake_scim(fault: Fault) -> crate::connectors::testing::TestServer {
    serve(handler(move |_, parts| {
        Box::pin(async move {
            let user = |n: u64| json!({"id": format!("u{n:02}"), "userName": format!("user{n}")});
            let query: HashMap<String, String> =
                form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
            let number = |name: &str, default: u64| query.get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
            let body = match parts.uri.path() {
                "/scim/ServiceProviderConfig" => json!({"filter": {"supported": false}}),
                "/scim/Groups" if matches!(fault, Fault::GroupsIgnoreStartIndex) => {
                    json!({"Resources": [{"id": "g1", "displayName": "G1", "members": [{"value": "u01"}]}]})
                }
                "/scim/Groups" => json!({"totalResults": 0, "Resources": []}),
                "/scim/Users" => {
                    let (start, count) = (number("startIndex", 1), number("count", 100));
                    let (total, listed) = match fault {
                        Fault::Undercounts => (Some(20), 20),
                        Fault::IgnoresStartIndex => (None, 25),
                        Fault::EmptyEarly => (Some(25), 20),
                        Fault::None | Fault::GroupsIgnoreStartIndex => (Some(25), 25),
                    };
                    let start = if matches!(fault, Fault::IgnoresStartIndex) { 1 } else { start };
                    let users: Vec<Value> = (start..start + count).filter(|n| *n <= listed).map(user).collect();
                    json!({"totalResults": total, "Resources": users})
                }
                path => match path.strip_prefix("/scim/Users/u").and_then(|n| n.parse::<u64>().ok()) {
                    Some(n) if (1..=25).contains(&n) => user(n),
                    _ => return respond(404, &[], json!({"schemas": [ERROR_SCHEMA], "status": "404"}).to_string()),
                },
            };
            respond(200, &[("content-type", "application/scim+json")], body.to_string())
        })
    }))
    .await
}

/// A full sync through the engine into `store` from the fake server.
async fn sync_from(fault: Fault, store: &std::sync::Arc<dyn crate::store::Store>) -> crate::sync::job::SyncReport {
    let server = fake_scim(fault).await;
    let (spec, settings) = scim_spec(&format!("{}/scim", server.base), 5);
    let connector = ScimConnector::with_http_settings(&spec, &settings, &token_inputs("tok"), fast_http()).unwrap();
    let job = crate::sync::job::SyncJob {
        connection: crate::model::ConnectionRef::new("ns", "idp"),
        mode: SyncMode::Full,
        trigger: Trigger::Requested,
        request: None,
        holder: "test".into(),
        dry_run: false,
        confirm_deletes: false,
        safeguard: Default::default(),
        settings_hash: "h".into(),
        full_sync_interval: Duration::from_secs(3600),
        max_duration: Duration::from_secs(60),
    };
    let cancel = crate::sync::cancel::Cancel::new();
    crate::sync::job::run(job, Box::new(connector), store.clone(), cancel).await
}

fn stored_ids(store: &std::sync::Arc<dyn crate::store::Store>) -> Vec<String> {
    let conn = crate::model::ConnectionRef::new("ns", "idp");
    store.list_accounts(&conn, None, 100).unwrap().into_iter().map(|a| a.id).collect()
}

/// Short reads never delete: each fault either fails the sync (the
/// store as it was) or is caught by asking for the unlisted users one by
/// one (kept, not deleted).
#[tokio::test]
async fn short_listings_never_delete_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn crate::store::Store> =
        std::sync::Arc::new(crate::store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let first = sync_from(Fault::None, &store).await;
    assert_eq!(first.counts.created, 25, "{first:?}");
    let everyone = stored_ids(&store);

    let undercounted = sync_from(Fault::Undercounts, &store).await;
    assert_eq!(undercounted.outcome, RunOutcome::Succeeded, "{undercounted:?}");
    assert_eq!(undercounted.counts.deleted, 0, "{undercounted:?}");
    assert!(undercounted.message.contains("5 account(s) the listing skipped"), "{}", undercounted.message);
    assert_eq!(stored_ids(&store), everyone);

    let early = sync_from(Fault::EmptyEarly, &store).await;
    assert_eq!(early.outcome, RunOutcome::Failed, "{early:?}");
    assert!(
        early.message.contains("no users at startIndex 21 although it reports totalResults 25"),
        "{}",
        early.message
    );
    assert_eq!(stored_ids(&store), everyone);

    let endless = tokio::time::timeout(Duration::from_secs(30), sync_from(Fault::IgnoresStartIndex, &store))
        .await
        .expect("a server that ignores startIndex is not paged forever");
    assert_eq!(endless.outcome, RunOutcome::Failed, "{endless:?}");
    assert!(endless.message.contains("only users it had already returned"), "{}", endless.message);
    assert_eq!(endless.pages, 1, "it stops at the first repeated page");
    assert_eq!(stored_ids(&store), everyone);

    let groups = tokio::time::timeout(Duration::from_secs(30), sync_from(Fault::GroupsIgnoreStartIndex, &store))
        .await
        .expect("a /Groups that ignores startIndex is not paged forever");
    assert_eq!(groups.outcome, RunOutcome::Failed, "{groups:?}");
    assert!(groups.message.contains("only groups it had already returned"), "{}", groups.message);
    assert_eq!(stored_ids(&store), everyone);
}
