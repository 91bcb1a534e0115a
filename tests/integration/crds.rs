//! The committed CRDs are exactly what the Rust types generate, and each
//! carries what `kubectl` users rely on.

use std::path::Path;

use idsync_api::crdgen;

/// Set `IDSYNC_UPDATE_CRDS=1` to rewrite the committed files after changing
/// the types.
fn update_requested() -> bool {
    std::env::var("IDSYNC_UPDATE_CRDS").is_ok_and(|v| v == "1")
}

fn check_dir(dir: &Path) {
    let mut drift = Vec::new();
    for crd in crdgen::all() {
        let path = dir.join(crdgen::file_name(&crd));
        let generated = crdgen::to_yaml(&crd).expect("CRD renders as YAML");
        if update_requested() {
            std::fs::create_dir_all(dir).expect("create CRD folder");
            std::fs::write(&path, &generated).expect("write CRD");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            drift.push(path.display().to_string());
        }
    }
    assert!(
        drift.is_empty(),
        "committed CRDs differ from the Rust types: {drift:?}; run `IDSYNC_UPDATE_CRDS=1 cargo test --test integration crds` and commit"
    );
    let committed_files = std::fs::read_dir(dir).expect("CRD folder exists").count();
    assert_eq!(committed_files, crdgen::all().len(), "{} holds a CRD the types no longer generate", dir.display());
}

#[test]
fn committed_crds_match_the_types() {
    check_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"));
}

#[test]
fn helm_chart_crds_match_the_types() {
    check_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/idsync/crds"));
}

/// The API reference under docs/ is generated from the CRDs, so it says
/// what the API server checks; `idsync docs api` prints it.
#[test]
fn the_api_reference_matches_the_crds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference/api.md");
    let generated = idsync_api::reference::markdown(&crdgen::all());
    if update_requested() {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("create docs/reference");
        std::fs::write(&path, &generated).expect("write the reference");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/reference/api.md differs from the CRDs; run `IDSYNC_UPDATE_CRDS=1 cargo test --test integration crds` and commit"
    );
    let printed =
        std::process::Command::new(env!("CARGO_BIN_EXE_idsync")).args(["docs", "api"]).output().expect("run idsync");
    assert!(printed.status.success());
    assert_eq!(String::from_utf8_lossy(&printed.stdout), generated);
    // What a reader looks for is there: a field, its bound, a rule's message.
    assert!(generated.contains("| `spec.importSafeguard.maxDeleteCount` |"), "a nested field row");
    assert!(generated.contains("confirmDeletes needs target.connections"), "a rule's message");
}

#[test]
fn idsync_crds_prints_every_committed_crd() {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_idsync")).arg("crds").output().expect("run idsync crds");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    for crd in crdgen::all() {
        let committed =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds").join(crdgen::file_name(&crd)))
                .expect("committed CRD");
        assert!(printed.contains(&committed), "idsync crds lacks {}", crdgen::file_name(&crd));
    }
    assert_eq!(printed.matches("kind: CustomResourceDefinition").count(), 5);
}

#[test]
fn every_crd_has_status_columns_short_names_and_the_idsync_category() {
    let expected_columns = [
        (
            "Connection",
            vec![
                "Provider",
                "Category",
                "Ready",
                "Status",
                "Suspended",
                "Syncing",
                "Last Sync",
                "Next Sync",
                "Accounts",
                "Age",
            ],
        ),
        (
            "ResyncRequest",
            vec![
                "Target",
                "Scope",
                "Mode",
                "Dry Run",
                "Phase",
                "Requested By",
                "Reason",
                "Message",
                "Started",
                "Completed",
                "Age",
            ],
        ),
        (
            "IdentityProfile",
            vec![
                "Source",
                "Identities",
                "Active",
                "Offboarded",
                "Orphans",
                "Drift",
                "Ready",
                "Pending",
                "Status",
                "Last Processed",
                "Age",
            ],
        ),
        ("NotificationProvider", vec!["SMTP Host", "Webhook", "Age"]),
        ("NotificationPolicy", vec!["Ready", "Delivering", "Status", "Last Delivery", "Age"]),
    ];
    let expected_short = [
        ("Connection", "conn"),
        ("ResyncRequest", "rr"),
        ("IdentityProfile", "idprof"),
        ("NotificationProvider", "nprov"),
        ("NotificationPolicy", "npol"),
    ];
    for crd in crdgen::all() {
        let kind = crd.spec.names.kind.clone();
        assert_eq!(crd.spec.group, "idsync.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["idsync".to_string()][..]), "{kind} category");
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        let wanted = expected_short.iter().find(|(k, _)| *k == kind).expect("known kind").1;
        assert!(short.iter().any(|s| s == wanted), "{kind} short names {short:?} lack {wanted}");
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{kind} has no status subresource"
        );
        let columns: Vec<String> = version
            .additional_printer_columns
            .as_ref()
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let wanted = &expected_columns.iter().find(|(k, _)| *k == kind).expect("known kind").1;
        assert_eq!(&columns, wanted, "{kind} printer columns");
    }
}
