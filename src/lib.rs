//! idsync: a Kubernetes operator that keeps identity and account data in sync
//! with a company's connected systems.

pub mod cli;
pub mod connectors;
pub mod controller;
pub mod dev;
pub mod health;
pub mod identity;
pub mod leader;
pub mod lease;
pub mod manifest;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod store;
pub mod sync;
pub mod tls;
