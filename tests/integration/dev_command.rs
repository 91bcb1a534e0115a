//! `idsync dev` from the outside, as a newcomer runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn idsync_dev_serves_the_examples_to_kubectl_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dev = Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["dev", "--apply"])
        .arg(&examples)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("idsync dev starts");
    let stdout = dev.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Press Ctrl-C to stop")) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = dev.kill();
                panic!("idsync dev did not come up; it printed: {printed:?}");
            }
        }
    }
    let text = printed.join("\n");
    assert!(text.contains(&format!("kubectl --kubeconfig {} get idsync", kubeconfig.display())), "{text}");

    let kubectl = |args: &[&str]| {
        Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", dir.path().join("cache"))
            .output()
            .expect("kubectl runs")
    };
    let out = kubectl(&["get", "idsync", "-A"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for expected in ["okta-prod", "employees", "resync-all", "PROVIDER", "PHASE", "IDENTITIES"] {
        assert!(listed.contains(expected), "{expected} missing from:\n{listed}");
    }

    // The quickstart's request is synced by the operator running inside.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(&["get", "rr", "acme-hr-first-sync", "-o", "jsonpath={.status.phase}"]);
        let phase = String::from_utf8_lossy(&out.stdout).into_owned();
        if phase == "Succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the quickstart request did not succeed (phase {phase:?})");
        std::thread::sleep(Duration::from_millis(200));
    }
    let accounts = kubectl(&["get", "conn", "acme-hr", "-o", "jsonpath={.status.accountCount}"]);
    assert_eq!(String::from_utf8_lossy(&accounts.stdout), "36");

    // And the quickstart's profile turns them into identities, with the
    // GitHub export correlated by e-mail (all but the build bot and the
    // contractor), and reports the drift: Frances Allen left and still has
    // an active GitHub account; the contractor's belongs to nobody.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(&[
            "get",
            "idprof",
            "acme-employees",
            "-o",
            "jsonpath={.status.identityCount}/{.status.uncorrelatedAccounts}/{.status.offboardedWithAccess}/{.status.orphanAccounts}",
        ]);
        let counts = String::from_utf8_lossy(&out.stdout).into_owned();
        if counts == "36/2/1/1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quickstart profile did not process (identities/uncorrelated/offboarded/orphans: {counts:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = String::from_utf8_lossy(&kubectl(&["get", "idprof", "acme-employees"]).stdout).into_owned();
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    let column = |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).copied());
    assert_eq!((column("OFFBOARDED"), column("ORPHANS")), (Some("1"), Some("1")), "{table}");
    assert!(text.contains("idsync identities list --profile acme-employees --store "), "{text}");

    // It serves its metrics where it says.
    let metrics_url = text
        .lines()
        .find_map(|l| l.strip_prefix("Metrics and health: http://"))
        .and_then(|rest| rest.split('/').next())
        .expect("the printed metrics address")
        .to_string();
    let metrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&metrics_url).expect("connect to the metrics port");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    };
    assert!(metrics.contains(r#"idsync_accounts{connection="default/acme-hr"} 36"#), "{metrics}");
    assert!(metrics.contains("controller_runtime_reconcile_total{"), "{metrics}");

    // Each demo user is a context, answered by RBAC with the chart's roles:
    // `kubectl auth can-i` per user.
    let can_i = |user: &str, verb: &str, resource: &str| {
        let out = kubectl(&["--context", &format!("idsync-dev-{user}"), "auth", "can-i", verb, resource]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can_i("alice", "confirm", "resyncrequests.idsync.dev"), "yes");
    assert_eq!(can_i("alice", "create", "connections.idsync.dev"), "yes");
    assert_eq!(can_i("bob", "create", "resyncrequests.idsync.dev"), "yes");
    assert_eq!(can_i("bob", "confirm", "resyncrequests.idsync.dev"), "no");
    assert_eq!(can_i("bob", "create", "connections.idsync.dev"), "no");
    assert_eq!(can_i("carol", "list", "connections.idsync.dev"), "yes");
    assert_eq!(can_i("carol", "create", "resyncrequests.idsync.dev"), "no");
    assert!(text.contains("--context idsync-dev-bob auth can-i confirm"), "{text}");

    // The running idsync holds its store: a backup works, online; a
    // restore over it is refused.
    let store = text
        .split("--store ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the printed store path")
        .to_string();
    let backup = format!("{store}.test-backup");
    let store_cmd =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_idsync")).args(args).output().expect("idsync runs");
    let backed_up = store_cmd(&["store", "backup", "--store", &store, "--to", &backup]);
    assert!(backed_up.status.success(), "{}", String::from_utf8_lossy(&backed_up.stderr));
    let refused = store_cmd(&["store", "restore", "--store", &store, "--from", &backup]);
    assert!(!refused.status.success(), "a restore under a running idsync");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is in use by a running idsync"));
    let _ = std::fs::remove_file(&backup);

    // The drift the status counts, case by case, as the printed hint lists it.
    assert!(text.contains("idsync drift list --profile acme-employees --store "), "{text}");
    let drift = store_cmd(&["drift", "list", "--profile", "acme-employees", "--store", &store]);
    let listed = String::from_utf8_lossy(&drift.stdout).into_owned();
    assert!(drift.status.success(), "{}", String::from_utf8_lossy(&drift.stderr));
    assert!(
        listed.lines().any(|l| l.contains("OffboardedWithAccess") && l.contains("E1008") && l.contains("fran-allen"))
    );
    assert!(listed.lines().any(|l| l.contains("OrphanAccount") && l.contains("jdoe-contractor")), "{listed}");
    assert!(!listed.contains("build-bot") && !listed.contains("E1020"), "{listed}");

    let pid = dev.id().to_string();
    let signalled = Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
    assert!(signalled.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = dev.try_wait().expect("poll") {
            assert!(status.success(), "idsync dev exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = dev.kill();
            panic!("idsync dev did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An unusable --data-dir stops `idsync dev` with the reason, before it
/// says it is running (a file where the folder should be).
#[test]
fn idsync_dev_with_an_unusable_data_dir_fails_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_a_folder = dir.path().join("store");
    std::fs::write(&not_a_folder, "a file, not a folder").expect("file");
    let out = Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["dev", "--port", "0", "--kubeconfig"])
        .arg(dir.path().join("kubeconfig"))
        .arg("--data-dir")
        .arg(&not_a_folder)
        .output()
        .expect("idsync runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(!stdout.contains("idsync dev is running"), "{stdout}");
}
