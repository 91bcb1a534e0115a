//! Every example validates as a cluster would admit it, covers the
//! scenarios the README promises, and refers only to objects the examples
//! define; every manifest under `tests/invalid/` is refused with an error
//! that names its field.

use std::collections::BTreeSet;
use std::path::Path;

use idsync::manifest::{self, CheckError, Checker, Document};
use idsync_api::connection::ProviderType;
use idsync_api::{Connection, IdentityProfile, NotificationPolicy, NotificationProvider, ResyncRequest, SyncMode};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<Document> {
    manifest::load_dir(&root().join("examples")).expect("examples load")
}

fn typed<T: serde::de::DeserializeOwned>(docs: &[Document], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d.kind() == kind)
        .map(|d| serde_json::from_value(d.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", d.source)))
        .collect()
}

#[test]
fn every_example_is_admitted() {
    let checker = Checker::new().expect("CRDs usable");
    let docs = examples();
    assert!(docs.len() >= 20, "expected the full set of examples, found {}", docs.len());
    for doc in &docs {
        match doc.kind() {
            "Connection" | "ResyncRequest" | "IdentityProfile" | "NotificationProvider" | "NotificationPolicy" => {
                if let Err(error) = checker.check(doc) {
                    panic!("{error}");
                }
            }
            "Secret" => {
                serde_json::from_value::<Secret>(doc.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc.source));
            }
            "ConfigMap" => {
                serde_json::from_value::<ConfigMap>(doc.value.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", doc.source));
            }
            other => panic!("{}: unexpected kind {other}", doc.source),
        }
    }
}

#[test]
fn examples_cover_every_provider_and_scenario() {
    let docs = examples();
    let connections: Vec<Connection> = typed(&docs, "Connection");
    let providers: BTreeSet<&str> = connections.iter().map(|c| c.spec.provider.provider_type().as_str()).collect();
    for provider in ProviderType::ALL {
        assert!(providers.contains(provider.as_str()), "no example Connection for provider {provider}");
    }

    let profiles: Vec<IdentityProfile> = typed(&docs, "IdentityProfile");
    let profile = profiles.first().expect("an IdentityProfile example");
    assert_eq!(profile.spec.schedule.time_zone, "America/Chicago");
    assert_eq!(profile.spec.schedule.cron, vec!["0 8 * * *", "0 20 * * *"]);
    assert!(profile.spec.manager.is_some() && profile.spec.lifecycle.is_some());
    assert!(
        profiles.iter().any(|p| !p.spec.drift.service_accounts.is_empty()),
        "no IdentityProfile example marks service accounts for the drift report"
    );

    let requests: Vec<ResyncRequest> = typed(&docs, "ResyncRequest");
    let has = |what: &str, test: &dyn Fn(&ResyncRequest) -> bool| {
        assert!(requests.iter().any(test), "no ResyncRequest example for {what}");
    };
    has("all connections", &|r| r.spec.target.all == Some(true));
    has("the Infrastructure category", &|r| r.spec.target.category == Some(idsync_api::Category::Infrastructure));
    has("one selected provider", &|r| r.spec.target.connections.as_ref().is_some_and(|c| c.len() == 1));
    has("a full resync", &|r| r.spec.mode == SyncMode::Full);
    has("a dry run", &|r| r.spec.dry_run);
    has("two selected identities", &|r| r.spec.identities.len() == 2);
}

#[test]
fn examples_refer_only_to_objects_they_define() {
    let docs = examples();
    let names = |kind: &str| -> BTreeSet<String> {
        docs.iter().filter(|d| d.kind() == kind).map(|d| d.name().to_string()).collect()
    };
    let (secrets, config_maps, connection_names) = (names("Secret"), names("ConfigMap"), names("Connection"));
    for connection in typed::<Connection>(&docs, "Connection") {
        if let Some(secret) = &connection.spec.credentials_secret_ref {
            assert!(secrets.contains(&secret.name), "Secret {} is not among the examples", secret.name);
        }
        if let idsync_api::Provider::Csv(csv) = &connection.spec.provider
            && let Some(cm) = &csv.source.config_map_key_ref
        {
            assert!(config_maps.contains(&cm.name), "ConfigMap {} is not among the examples", cm.name);
        }
    }
    for profile in typed::<IdentityProfile>(&docs, "IdentityProfile") {
        assert!(connection_names.contains(&profile.spec.authoritative_connection));
        for c in &profile.spec.correlation {
            assert!(connection_names.contains(&c.connection), "profile correlates unknown {}", c.connection);
        }
    }
    for request in typed::<ResyncRequest>(&docs, "ResyncRequest") {
        for name in request.spec.target.connections.iter().flatten() {
            assert!(connection_names.contains(name), "request names unknown connection {name}");
        }
    }
    let provider_names = names("NotificationProvider");
    for policy in typed::<NotificationPolicy>(&docs, "NotificationPolicy") {
        for route in &policy.spec.providers {
            assert!(provider_names.contains(&route.name), "policy names unknown provider {}", route.name);
        }
    }
    for provider in typed::<NotificationProvider>(&docs, "NotificationProvider") {
        let smtp = provider.spec.smtp.as_ref().and_then(|s| s.credentials_secret_ref.as_ref()).map(|r| &r.name);
        let webhook = provider.spec.webhook.as_ref().and_then(|w| w.signing_secret_ref.as_ref()).map(|r| &r.name);
        for secret in smtp.into_iter().chain(webhook) {
            assert!(secrets.contains(secret), "Secret {secret} is not among the examples");
        }
    }
}

/// The `# field:` and `# message:` header lines of an invalid manifest.
fn expectation(text: &str, path: &Path) -> (String, String) {
    let header = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
            .unwrap_or_else(|| panic!("{} lacks a `# {key}:` line", path.display()))
            .to_string()
    };
    (header("field"), header("message"))
}

#[test]
fn every_invalid_manifest_is_refused_naming_its_field() {
    let checker = Checker::new().expect("CRDs usable");
    let dir = root().join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/invalid").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 20, "expected the set of invalid manifests");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        let (field, message) = expectation(&text, &path);
        let docs = manifest::load_file(&path).expect("parses as YAML");
        assert_eq!(docs.len(), 1, "{}", path.display());
        match checker.check(&docs[0]) {
            Ok(_) => panic!("{} was admitted, but {field} is invalid", path.display()),
            Err(CheckError::Invalid { invalid, .. }) => {
                let named: Vec<&str> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
                assert!(named.contains(&field.as_str()), "{}: errors name {named:?}, not {field}", path.display());
                let rendered = invalid.to_string();
                assert!(rendered.contains(&message), "{}: {rendered:?} lacks {message:?}", path.display());
            }
            Err(other) => panic!("{}: refused for the wrong reason: {other}", path.display()),
        }
    }
}

#[test]
fn idsync_validate_reports_examples_valid_and_invalid_manifests_invalid() {
    let run = |path: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_idsync"))
            .arg("validate")
            .arg(path)
            .output()
            .expect("run idsync validate")
    };
    let good = run(&root().join("examples"));
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stdout));
    let bad = run(&root().join("tests/invalid/connection-delete-percent-over-100.yaml"));
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("spec.importSafeguard.maxDeletePercent"), "{out}");
}

/// The maxima that keep numbers a person writes within what the operator's
/// arithmetic takes: `idsync validate`, in front of a GitOps repository,
/// refuses each naming the field and the bound.
#[test]
fn idsync_validate_refuses_numbers_beyond_their_maxima() {
    for file in [
        "resync-ttl-beyond-a-year.yaml",
        "connection-huge-page-size.yaml",
        "connection-max-delete-count-1e23.yaml",
        "connection-timeout-over-ten-minutes.yaml",
        "connection-sync-longer-than-a-day.yaml",
    ] {
        let path = root().join("tests/invalid").join(file);
        let (field, message) = expectation(&std::fs::read_to_string(&path).expect("read"), &path);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_idsync"))
            .arg("validate")
            .arg(&path)
            .output()
            .expect("run idsync validate");
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{file} was reported valid: {out}");
        assert!(out.contains(&field) && out.contains(&message), "{file}: {out:?} lacks {field} / {message}");
    }
}
