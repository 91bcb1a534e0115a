//! idsync's integration tests, one binary: each module is one area, and
//! `common` is the shared harness (a devcluster, kubectl, the operator).

mod common;

mod access;
mod api_writes;
mod cel_limits;
mod chart;
mod connection_inputs;
mod crds;
mod dev_command;
mod devcluster_kubectl;
mod devcluster_semantics;
mod docs;
mod drift_e2e;
mod examples;
mod faults;
mod github;
mod identities_cli;
mod identity_e2e;
mod image;
mod kill_loop;
mod kubectl_plugin;
mod ldap_server;
mod leader;
mod msgraph;
mod notifications;
mod okta;
mod panic_safety;
mod rbac;
mod replicas;
mod replicas_postgres;
mod run_command;
mod runs_cli;
mod scim_server;
mod short_reads;
mod source_addresses;
mod store_backup;
mod store_postgres_cli;
mod sync_e2e;
mod undecodable;
