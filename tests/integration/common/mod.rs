//! Shared harness of the end-to-end tests: a devcluster, its kubeconfig,
//! and the real kubectl pointed at it.
#![allow(dead_code)]

pub mod csv_server;
pub mod fault_server;
pub mod faults;
pub mod operator;
pub mod rbac;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use idsync_devcluster::{Config, DevCluster};

pub struct Harness {
    pub cluster: DevCluster,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(mut config: Config) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        config.kubeconfig = Some(dir.path().join("kubeconfig"));
        let cluster = DevCluster::start(config).await.expect("devcluster starts");
        let client = cluster.client().expect("client");
        Harness { cluster, client, dir }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubectl command against this devcluster, with its own discovery
    /// cache so tests do not share one.
    pub fn kubectl_command(&self) -> tokio::process::Command {
        self.kubectl_command_of(&kubectl_path())
    }

    /// The same with another kubectl binary (another version).
    pub fn kubectl_command_of(&self, binary: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary);
        command
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl to completion (at most 60 s).
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        let run = self.kubectl_command().args(args).output();
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 60 s"))
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns its stdout, failing the test on an error.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Server-side applies one object given as JSON (any kind the devcluster
    /// serves), as `idsync dev --apply` does.
    pub async fn apply_json(&self, value: serde_json::Value) {
        let doc = idsync::manifest::Document { source: "test".to_string(), value };
        idsync::dev::apply_documents(&self.client, &[doc], "default").await.expect("applied");
    }

    /// Creates the ResyncRequest in `default` (a create, not an apply:
    /// requests are immutable and one name is one run).
    pub async fn create_request(&self, request: impl Into<idsync_api::ResyncRequest>) {
        let api: kube::Api<idsync_api::ResyncRequest> = kube::Api::namespaced(self.client.clone(), "default");
        api.create(&kube::api::PostParams::default(), &request.into()).await.expect("create request");
    }

    /// Waits until the ResyncRequest `name` has finished and returns it.
    pub async fn finished_request(&self, name: &str, timeout: Duration) -> idsync_api::ResyncRequest {
        let api: kube::Api<idsync_api::ResyncRequest> = kube::Api::namespaced(self.client.clone(), "default");
        let found = eventually(timeout, || async {
            let r = api.get(name).await.ok()?;
            r.status.as_ref()?.phase.filter(|p| p.is_finished())?;
            Some(r)
        })
        .await;
        match found {
            Some(r) => r,
            None => {
                panic!("ResyncRequest {name} did not finish: {:#?}", api.get(name).await.ok().and_then(|r| r.status))
            }
        }
    }

    /// Installs idsync's CRDs with kubectl, as the README says.
    /// A CSV Connection `hr` reading `csv` (columns employee_id, name,
    /// work_email) from the ConfigMap `hr-export`.
    pub async fn hr_csv_connection(&self, csv: &str) {
        use kube::api::{Api, Patch, PatchParams};
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(self.client.clone(), "default");
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hr-export"},
            "data": {"data.csv": csv}});
        api.patch("hr-export", &PatchParams::apply("test").force(), &Patch::Apply(&cm)).await.expect("configmap");
        let hr = idsync_api::Connection::test("hr")
            .csv_config_map("hr-export", "data.csv")
            .id_column("employee_id")
            .column("email", "work_email")
            .column("displayName", "name")
            .build();
        self.apply_json(serde_json::to_value(hr).expect("json")).await;
    }

    pub async fn install_crds(&self) {
        self.kubectl_ok(&["apply", "-f", &repo("crds").display().to_string()]).await;
    }
}

pub fn kubectl_path() -> PathBuf {
    std::env::var_os("KUBECTL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// A tool `scripts/test` installs (`$IDSYNC_TOOLS`, by default
/// `~/.cache/idsync-tools`); the test fails saying how to get it.
pub fn tool(path: &str) -> PathBuf {
    let base = std::env::var_os("IDSYNC_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/idsync-tools"));
    let tool = base.join(path);
    assert!(tool.exists(), "{} is missing: run ./scripts/test once, which installs it", tool.display());
    tool
}

/// Every kubectl the devcluster is tested with: the one on PATH and 1.35.
pub fn kubectls() -> Vec<PathBuf> {
    vec![kubectl_path(), tool("kubectl-v35/kubectl")]
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Polls `check` until it returns Some, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
