//! idsync: a Kubernetes operator that keeps identity and account data in sync
//! with a company's connected systems.

pub mod api;
pub mod dev;
pub mod devcluster;
pub mod manifest;
pub mod schema;
