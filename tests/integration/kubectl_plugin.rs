//! `kubectl idsync …`: the idsync binary linked as `kubectl-idsync` on PATH,
//! run through the real kubectl's plugin dispatch against an operator on the
//! devcluster. A resync names its requester from the API server, follows the
//! request to its end and exits by its outcome; status says what needs
//! attention.

use std::process::Output;
use std::time::Duration;

use kube::api::Api;

use idsync_api::resync_request::Phase;
use idsync_api::{ResyncRequest, SyncMode};

use crate::common::{self, Harness};

/// Runs `kubectl idsync ARGS` with the plugin first on PATH.
async fn plugin(h: &Harness, args: &[&str]) -> Output {
    let bin = h.dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin folder");
    let link = bin.join("kubectl-idsync");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_idsync"), &link).expect("link the plugin");
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = h.kubectl_command();
    command.env("PATH", path).arg("idsync").args(args);
    tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("kubectl idsync finished in time")
        .expect("kubectl runs")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn hr_connection(h: &Harness) {
    h.hr_csv_connection("employee_id,name,work_email\nE1,Ada,ada@acme.example\nE2,Grace,grace@acme.example\nE3,Alan,alan@acme.example\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_idsync_resyncs_follows_and_reports_status() {
    let common::operator::Started { h, operator: _operator, .. } = common::operator::start_operator().await;
    hr_connection(&h).await;

    let out = plugin(&h, &["resync", "connection", "hr", "--full", "--wait"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    let name = first
        .strip_prefix("resyncrequest.idsync.dev/")
        .and_then(|rest| rest.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("the created request first: {stdout}"));
    assert!(name.starts_with("resync-hr-"), "{name}");
    assert!(stdout.contains("hr: Succeeded: "), "each target's end: {stdout}");
    assert!(
        stdout.contains(&format!("resyncrequest.idsync.dev/{name} Succeeded: 1 of 1 connection(s) synced")),
        "{stdout}"
    );

    // The request names who asked, as the API server knows them.
    let api: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    let request = api.get(name).await.expect("the request");
    assert_eq!(request.spec.requested_by.as_deref(), Some("kubernetes-admin"));
    assert_eq!(request.spec.mode, SyncMode::Full);
    assert_eq!(request.status.and_then(|s| s.phase), Some(Phase::Succeeded));

    // A dry run prints what it would change.
    let out = plugin(&h, &["resync", "connection", "hr", "--dry-run", "--wait", "-o", "name"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("resyncrequest.idsync.dev/resync-hr-"), "{stdout}");

    let out = plugin(&h, &["status"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("nothing needs attention"), "{stdout}");
    assert!(stdout.contains("connections: 1 (1 ready), 3 accounts"), "{stdout}");
    let out = plugin(&h, &["status", "-o", "json"]).await;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status -o json is JSON");
    assert_eq!(summary["connections"], serde_json::json!({"total": 1, "ready": 1, "accounts": 3}));
    assert_eq!(summary["needsAttention"], serde_json::json!([]));

    // A request that fails: the exit code says so, and the reason is printed.
    let out = plugin(&h, &["resync", "connection", "nosuch", "--wait"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("Failed"), "{stdout}");
    assert!(stdout.contains("nosuch"), "{stdout}");

    // The API server's refusal, in its own words.
    let out = plugin(&h, &["resync", "category", "Payroll"]).await;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("\"Payroll\" is not a category"), "{}", text(&out).1);
}

#[tokio::test]
async fn the_plugin_knows_its_name_version_and_completions() {
    let h = Harness::start().await;
    let out = plugin(&h, &["--help"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("Usage: kubectl idsync"), "{stdout}");
    let out = plugin(&h, &["version"]).await;
    assert_eq!(text(&out).0.trim(), format!("kubectl idsync {}", env!("CARGO_PKG_VERSION")));
    let out = plugin(&h, &["completion", "bash"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("complete -F _kubectl__idsync"), "a bash completion for the plugin's binary: {stdout}");
    assert!(stdout.contains("resync"), "it completes the subcommands");
    // Misuse: clap's usage error, once, and exit code 2.
    let out = plugin(&h, &["resync", "connection"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out).1;
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
}

/// `kubectl idsync identities|runs|accounts …` read the operator's store in
/// its pod: the plugin runs them there with `kubectl exec` (a recording
/// stand-in for kubectl here: the devcluster runs no pods) and exits as
/// they did.
#[test]
fn store_commands_run_in_the_operators_pod_through_kubectl_exec() {
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("args");
    let fake = dir.path().join("kubectl");
    std::fs::write(&fake, format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexit 3\n", record.display()))
        .expect("script");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let plugin = dir.path().join("kubectl-idsync");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_idsync"), &plugin).expect("link");
    let out = std::process::Command::new(&plugin)
        .args(["identities", "list", "--profile", "employees", "--operator-namespace", "iam", "--context", "prod"])
        .env("KUBECTL", &fake)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "the pod's exit code");
    let args = std::fs::read_to_string(&record).expect("kubectl was run");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "--context=prod",
            "exec",
            "-n",
            "iam",
            "deploy/idsync",
            "--",
            "idsync",
            "identities",
            "list",
            "--profile",
            "employees"
        ]
    );
    // As plain `idsync`, the same command reads a local store instead.
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["identities", "list", "--profile", "employees", "--store", "/nonexistent/idsync.db"])
        .env("KUBECTL", &fake)
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&local.stderr).contains("no store at /nonexistent/idsync.db"));
}
