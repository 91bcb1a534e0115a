//! Access control end to end, as a cluster with the chart installed
//! enforces it: the chart's roles and admission policy (as `idsync dev`
//! installs them), users bound to them, the real kubectl and `kubectl idsync`
//! for each user, and the operator with the chart's own rules.
//!
//! A requester resyncs; a requester's confirmation is refused naming the
//! policy; an admin's goes through and is recorded with their name; a viewer
//! reads but cannot create; `requestedBy` cannot name someone else.

use std::process::Output;
use std::time::Duration;

use kube::api::Api;
use serde_json::json;

use idsync_api::ResyncRequest;
use idsync_api::resync_request::Phase;

use crate::common::{self, Harness};

pub(crate) struct Users {
    kubeconfig: std::path::PathBuf,
}

impl Users {
    /// alice (admin), bob (requester) and carol (viewer), bound as `idsync
    /// dev` binds them, each a context of a kubeconfig of their own.
    pub(crate) async fn add(h: &Harness) -> Users {
        idsync::dev::install_access(&h.client).await.expect("the chart's roles and policy");
        idsync::dev::bind_demo_users(&h.client).await.expect("bindings");
        let tokens: Vec<(&str, String)> =
            ["alice", "bob", "carol"].iter().map(|u| (*u, h.cluster.add_user(u, &["staff"]))).collect();
        let contexts: Vec<(&str, &str)> = tokens.iter().map(|(u, t)| (*u, t.as_str())).collect();
        let kubeconfig = h.dir.path().join("users.kubeconfig");
        std::fs::write(&kubeconfig, h.cluster.kubeconfig_yaml_with_users(&contexts)).expect("kubeconfig");
        Users { kubeconfig }
    }

    /// `kubectl --context idsync-dev-USER ARGS` (or `kubectl idsync …` when
    /// the first argument is "idsync"), with `stdin` piped in.
    pub(crate) async fn kubectl(&self, h: &Harness, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let bin = h.dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let link = bin.join("kubectl-idsync");
        if !link.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_idsync"), &link).expect("link the plugin");
        }
        let mut command = h.kubectl_command();
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .args(args)
            .args(["--context", &format!("idsync-dev-{user}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("kubectl runs");
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).await.expect("write stdin");
        }
        drop(child.stdin.take());
        tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .expect("kubectl finished in time")
            .expect("kubectl output")
    }

    pub(crate) async fn create(&self, h: &Harness, user: &str, request: serde_json::Value) -> Output {
        self.kubectl(h, user, &["create", "-f", "-"], Some(&request.to_string())).await
    }
}

fn request(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"target": {"connections": ["hr"]}, "mode": "Full"});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "ResyncRequest", "metadata": {"name": name}, "spec": spec})
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn hr_connection(h: &Harness) {
    h.hr_csv_connection("employee_id,name,work_email\nE1,Ada,ada@acme.example\nE2,Grace,grace@acme.example\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requesters_resync_only_admins_confirm_viewers_read() {
    let common::operator::Started { h, operator: _operator, .. } = common::operator::start_operator().await;
    hr_connection(&h).await;
    let users = Users::add(&h).await;
    let policy = "ValidatingAdmissionPolicy 'idsync-confirmations' with binding 'idsync-confirmations' denied request";

    // A requester resyncs, naming themself, and it runs.
    let out = users.create(&h, "bob", request("bob-sync", json!({"requestedBy": "bob"}))).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let done = h.finished_request("bob-sync", Duration::from_secs(60)).await;
    assert_eq!(done.status.and_then(|s| s.phase), Some(Phase::Succeeded));

    // A requester's confirmation is refused by the API server, naming the policy.
    let out =
        users.create(&h, "bob", request("bob-confirms", json!({"confirmDeletes": true, "requestedBy": "bob"}))).await;
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains(policy), "{said}");
    assert!(
        said.contains("confirmDeletes, confirmRemovals and applyPendingChanges are admin actions: bob may not confirm"),
        "{said}"
    );
    // And through the plugin, in the API server's words, once.
    let out = users.kubectl(&h, "bob", &["idsync", "resync", "connection", "hr", "--confirm-deletes"], None).await;
    assert!(!out.status.success());
    let said = stderr(&out);
    assert_eq!(said.matches("bob may not confirm").count(), 1, "{said}");

    // Nor may anyone claim to be someone else.
    let out = users.create(&h, "bob", request("bob-as-alice", json!({"requestedBy": "alice"}))).await;
    assert!(stderr(&out).contains("spec.requestedBy must name the user creating the request: bob"), "{}", stderr(&out));

    // An admin's confirmation needs their name, and then goes through.
    let out = users.create(&h, "alice", request("alice-anonymous", json!({"confirmDeletes": true}))).await;
    assert!(
        stderr(&out).contains("a confirmation records who confirms: set spec.requestedBy to alice"),
        "{}",
        stderr(&out)
    );
    let out = users
        .create(&h, "alice", request("alice-confirms", json!({"confirmDeletes": true, "requestedBy": "alice"})))
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let done = h.finished_request("alice-confirms", Duration::from_secs(60)).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded));
    let events = h
        .kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "regarding.name=alice-confirms",
            "-o",
            "jsonpath={.items[*].note}",
        ])
        .await;
    assert!(events.contains("requested by alice"), "the completion Event names the requester: {events}");

    // The plugin names the requester itself.
    let out = users.kubectl(&h, "bob", &["idsync", "resync", "connection", "hr", "--wait"], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let api: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    let mine = api.list(&Default::default()).await.expect("list").items;
    assert!(mine.iter().any(|r| r.metadata.name.as_deref().is_some_and(|n| n.starts_with("resync-hr-"))
        && r.spec.requested_by.as_deref() == Some("bob")));

    // A viewer reads, and cannot create.
    let out = users.kubectl(&h, "carol", &["get", "resyncrequests", "-o", "name"], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resyncrequest.idsync.dev/bob-sync"));
    let out = users.create(&h, "carol", request("carol-sync", json!({}))).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("User \"carol\" cannot create resource \"resyncrequests\" in API group \"idsync.dev\""),
        "{}",
        stderr(&out)
    );

    // kubectl auth can-i answers per user.
    for (user, verb, expected) in
        [("alice", "confirm", "yes"), ("bob", "confirm", "no"), ("bob", "create", "yes"), ("carol", "create", "no")]
    {
        let out = users.kubectl(&h, user, &["auth", "can-i", verb, "resyncrequests.idsync.dev"], None).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected, "{user} {verb}");
    }
}
