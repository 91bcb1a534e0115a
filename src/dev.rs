//! `idsync dev`: a devcluster with idsync's CRDs installed and a folder of
//! manifests applied, for a first run and for end-to-end tests.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;

use crate::manifest::{self, Document, ManifestError};
use idsync_api::crdgen;

/// The field manager of everything `idsync dev` applies.
pub const FIELD_MANAGER: &str = "idsync-dev";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{source_name}: cannot apply {kind} {name:?}: {message}")]
    Apply { source_name: String, kind: String, name: String, message: String },
    #[error("cannot install the CRD {name}: {source}")]
    InstallCrd { name: String, source: kube::Error },
}

/// Installs (server-side applies) idsync's CRDs.
pub async fn install_crds(client: &kube::Client) -> Result<(), DevError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crdgen::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .map_err(|source| DevError::InstallCrd { name: name.clone(), source })?;
    }
    Ok(())
}

/// Every manifest under the folders, Namespaces and CRDs first, then in
/// path order.
pub fn load_folders(folders: &[PathBuf]) -> Result<Vec<Document>, DevError> {
    let mut docs = Vec::new();
    for folder in folders {
        docs.extend(if folder.is_dir() { manifest::load_dir(folder)? } else { manifest::load_file(folder)? });
    }
    docs.sort_by_key(|d| match d.kind() {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    });
    Ok(docs)
}

/// Applies documents with server-side apply, as `kubectl apply
/// --server-side` would. Namespaced objects without a namespace go to
/// `default_namespace`.
pub async fn apply_documents(
    client: &kube::Client,
    docs: &[Document],
    default_namespace: &str,
) -> Result<usize, DevError> {
    let mut applied = 0;
    for doc in docs {
        let fail = |message: String| DevError::Apply {
            source_name: doc.source.clone(),
            kind: doc.kind().to_string(),
            name: doc.name().to_string(),
            message,
        };
        let (group, version) = match doc.api_version().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), doc.api_version().to_string()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, doc.kind());
        let (resource, capabilities) = pinned_kind(client, &gvk).await.map_err(|e| fail(e.to_string()))?;
        let object: DynamicObject = serde_json::from_value(doc.value.clone()).map_err(|e| fail(e.to_string()))?;
        let api: Api<DynamicObject> = if capabilities.scope == kube::discovery::Scope::Namespaced {
            let ns = object.metadata.namespace.clone().unwrap_or_else(|| default_namespace.to_string());
            Api::namespaced_with(client.clone(), &ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(doc.name(), &params, &Patch::Apply(&object)).await.map_err(|e| fail(describe(e)))?;
        applied += 1;
    }
    Ok(applied)
}

/// The name prefix of the access objects `idsync dev` installs: the chart's
/// for a release called `idsync`.
pub const ACCESS_PREFIX: &str = "idsync";

/// Installs what the chart installs for access control: the viewer,
/// requester and admin ClusterRoles and the confirmations admission policy
/// (`idsync_api::access`, which the chart test keeps equal to the chart's).
pub async fn install_access(client: &kube::Client) -> Result<usize, DevError> {
    let objects = idsync_api::access::roles(ACCESS_PREFIX, true)
        .into_iter()
        .chain(idsync_api::access::admission_policy(ACCESS_PREFIX));
    let docs: Vec<Document> = objects
        .map(|value| Document { source: "idsync access (the chart's roles and policy)".into(), value })
        .collect();
    apply_documents(client, &docs, "default").await
}

/// The users `idsync dev` adds, each with a kubeconfig context
/// `idsync-dev-NAME`, and the role bound to them cluster-wide.
pub const DEMO_USERS: [(&str, &str); 3] = [("alice", "admin"), ("bob", "requester"), ("carol", "viewer")];

/// Binds each demo user to their role (`<prefix>-<role>`), cluster-wide.
pub async fn bind_demo_users(client: &kube::Client) -> Result<usize, DevError> {
    let docs: Vec<Document> = DEMO_USERS
        .iter()
        .map(|(user, role)| Document {
            source: "idsync dev's demo users".into(),
            value: serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("idsync-dev:{user}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": format!("{ACCESS_PREFIX}-{role}")},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }),
        })
        .collect();
    apply_documents(client, &docs, "default").await
}

/// The API server's message of a failed request, without kube's wrapping.
fn describe(error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    }
}

/// What a person can type next, naming a Connection that was applied.
pub fn next_steps(kubeconfig: &Path, docs: &[Document], store: &Path) -> String {
    let k = kubeconfig.display();
    let connection = docs.iter().find(|d| d.kind() == "Connection").map(|d| d.name()).unwrap_or("NAME");
    // The quickstart's profile when applied, else any.
    let profile = docs
        .iter()
        .filter(|d| d.kind() == "IdentityProfile")
        .map(|d| d.name())
        .find(|n| *n == "acme-employees")
        .or_else(|| docs.iter().find(|d| d.kind() == "IdentityProfile").map(|d| d.name()))
        .unwrap_or("NAME");
    let store = store.display();
    format!(
        "idsync dev is running. Try:\n\
         \x20 kubectl --kubeconfig {k} get idsync\n\
         \x20 kubectl --kubeconfig {k} get connections\n\
         \x20 kubectl --kubeconfig {k} describe connection {connection}\n\
         \x20 kubectl --kubeconfig {k} apply -f examples/resync/all-connections.yaml\n\
         As a demo user (alice: idsync-admin, bob: idsync-requester, carol: idsync-viewer):\n\
         \x20 kubectl --kubeconfig {k} --context idsync-dev-bob auth can-i confirm resyncrequests.idsync.dev\n\
         \x20 kubectl --kubeconfig {k} --context idsync-dev-carol get connections\n\
         The store is {store}; read identities and access drift with:\n\
         \x20 idsync identities list --profile {profile} --store {store}\n\
         \x20 idsync drift list --profile {profile} --store {store}\n\
         Press Ctrl-C to stop.\n"
    )
}
