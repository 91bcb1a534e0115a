//! The chart's ClusterRole against what the operator does. Every end-to-end
//! test runs the operator with exactly the chart's rules (the devcluster
//! enforces them), so a missing permission fails there; this test finds the
//! other mistake: a permission the chart grants and the operator never uses.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::rbac::{OPERATOR_USER, chart_rules};
use common::{Harness, eventually};
use idsync::leader::{self, LeaderConfig};
use idsync_api::{Connection, IdentityProfile, NotificationPolicy, NotificationProvider, ResyncRequest};
use idsync_devcluster::authz::Access;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const EXPORT: &str = "employee_id,work_email\nE1,a@acme.example\nE2,b@acme.example\n";

/// Every (verb, group, resource) the chart's rules grant, wildcards aside.
fn granted() -> BTreeSet<Access> {
    let mut all = BTreeSet::new();
    for rule in chart_rules() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        ![&group, &resource, verb].iter().any(|s| s.contains('*')),
                        "the chart grants a wildcard: {verb} {resource} in {group:?}"
                    );
                    all.insert(Access { verb: verb.clone(), group: group.clone(), resource: resource.clone() });
                }
            }
        }
    }
    all
}

async fn create<K>(h: &Harness, object: K)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &object).await.expect("created");
}

/// Everything the operator does in its life: checks and syncs Connections
/// reading their Secret or ConfigMap, processes a profile, runs a request
/// and deletes it after its TTL, cleans up a deleted Connection's accounts,
/// publishes Events, and leads through its Lease.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_grants_nothing_the_operator_never_uses() {
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hr-export", "labels": {"idsync.dev/credentials": "true"}},
        "stringData": {"people.csv": EXPORT}
    }))
    .expect("secret");
    create(&h, secret).await;
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "gh"}, "data": {"people.csv": EXPORT}})).expect("configmap");
    create(&h, map).await;
    create(&h, Connection::test("hr").csv_secret("hr-export", "people.csv").id_column("employee_id").build()).await;
    create(&h, Connection::test("gh").id_column("employee_id").build()).await;
    let profile = IdentityProfile::test("people")
        .authoritative("hr")
        .correlate("gh", "email", "email")
        .attribute("email", "accounts.hr.email")
        .build();
    create(&h, profile).await;
    // Notifications: the sync lists policies and providers, and the worker
    // reads the provider (a webhook nobody answers) and writes the failed
    // delivery on the policy's status.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    create(&h, NotificationProvider::test("hook").webhook(&format!("http://127.0.0.1:{closed}/hook")).build()).await;
    create(&h, NotificationPolicy::test("ops").provider("hook", []).build()).await;
    let request = ResyncRequest::test("everything").all().ttl_seconds_after_finished(0).build();
    create(&h, request).await;
    let requests: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    let deleted = eventually(Duration::from_secs(30), || async {
        requests.get_opt("everything").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(deleted.is_some(), "the finished request is deleted after its TTL");
    let policies: Api<NotificationPolicy> = Api::namespaced(h.client.clone(), "default");
    let reported = eventually(Duration::from_secs(30), || async {
        (policies.get("ops").await.ok()?.status?.failed_deliveries > 0).then_some(())
    })
    .await;
    assert!(reported.is_some(), "the failed delivery shows on the policy's status");

    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    connections.delete("gh", &DeleteParams::default()).await.expect("delete");
    let gone =
        eventually(Duration::from_secs(20), || async { connections.get_opt("gh").await.ok()?.is_none().then_some(()) })
            .await;
    assert!(gone.is_some(), "the finalizer let the deleted Connection go");

    // Leading: the Lease is created, renewed and released.
    let client = h.cluster.client_as(OPERATOR_USER, chart_rules()).expect("client");
    let config = LeaderConfig::new("default", "rbac-test");
    let lead = |_token: CancellationToken| async { tokio::time::sleep(Duration::from_millis(200)).await };
    tokio::time::timeout(Duration::from_secs(20), leader::run(client.clone(), config, lead, std::future::pending()))
        .await
        .expect("leading ends")
        .expect("leading works");
    // A replica sharing a PostgreSQL store: its member Lease is taken and
    // the members listed.
    let (members, mut seen) = tokio::sync::watch::channel(idsync::membership::Members::new([], None));
    let membership = idsync::membership::MembershipConfig::new("default", "rbac-replica", Duration::from_secs(5));
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(idsync::membership::run(client, membership, members, async {
        let _ = left.await;
    }));
    let joined = tokio::time::timeout(Duration::from_secs(20), seen.wait_for(|m| m.joined())).await;
    assert!(joined.is_ok_and(|j| j.is_ok()), "the replica joined with the chart's rights");
    let _ = leave.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), running).await;
    operator.stop().await;

    let used: BTreeSet<Access> = h.cluster.accesses(OPERATOR_USER).into_iter().collect();
    let unused: Vec<String> = granted()
        .difference(&used)
        .map(|a| {
            format!(
                "{} {}{}",
                a.verb,
                a.resource,
                if a.group.is_empty() { String::new() } else { format!(".{}", a.group) }
            )
        })
        .collect();
    assert!(unused.is_empty(), "the chart grants what the operator never calls: {unused:?}\nused: {used:#?}");
}
