//! The custom resources of the `idsync.dev/v1alpha1` API: their Rust types,
//! the conditions they carry, and the CRDs generated from them.
//!
//! The types hold configuration and summaries only; synced data (accounts,
//! identities, cursors, run history) lives in the operator's store.
//!
//! What an OpenAPI schema can check is in the schema (types, enums, ranges,
//! required fields, `x-kubernetes-validations` CEL rules), so a bad manifest is
//! refused at `kubectl apply` time. What it cannot check — cron syntax, time
//! zone names, the CEL expressions of identity profiles, Secrets that exist —
//! the controllers report as a `Stalled` condition naming the field.

pub mod access;
pub mod common;
pub mod conditions;
pub mod connection;
pub mod crdgen;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod identity_profile;
pub mod notification;
pub mod reference;
pub mod resync_request;

pub use common::{Category, ConcurrencyPolicy, SecretReference, SyncCounts, SyncMode};
pub use connection::{Connection, ConnectionSpec, ConnectionStatus, Provider};
pub use identity_profile::{IdentityProfile, IdentityProfileSpec, IdentityProfileStatus};
pub use notification::{
    NotificationEvent, NotificationPolicy, NotificationPolicySpec, NotificationPolicyStatus, NotificationProvider,
    NotificationProviderSpec,
};
pub use resync_request::{ResyncRequest, ResyncRequestSpec, ResyncRequestStatus};

/// The API group of every idsync resource.
pub const GROUP: &str = "idsync.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get idsync` category shared by every kind.
pub const CATEGORY: &str = "idsync";
/// Annotation whose new value asks for an ad-hoc delta sync of a Connection,
/// the way Flux's `reconcile.fluxcd.io/requestedAt` does.
pub const REQUESTED_AT_ANNOTATION: &str = "idsync.dev/requested-at";
