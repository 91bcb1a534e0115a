//! Admission semantics shared by the example tests and the devcluster:
//! defaults, pruning, transition rules, and the API server's wording.

use idsync_api::crdgen;
use idsync_devcluster::schema::{ErrorType, FieldValidation, SchemaValidator};
use serde_json::{Value, json};

fn validator(kind: &str) -> SchemaValidator {
    let crd = crdgen::all().into_iter().find(|c| c.spec.names.kind == kind).expect("known kind");
    SchemaValidator::for_crd(&crd, "v1alpha1").expect("usable schema")
}

fn resync(spec: Value) -> Value {
    json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "ResyncRequest", "metadata": {"name": "r1"}, "spec": spec})
}

#[test]
fn defaults_are_filled_in_as_the_api_server_stores_them() {
    let connection = json!({
        "apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "metadata": {"name": "hris"},
        "spec": {"category": "HRIS", "provider": {"type": "csv", "csv": {
            "source": {"configMapKeyRef": {"name": "hris-export", "key": "people.csv"}}, "idColumn": "id"}}}
    });
    let admitted = validator("Connection").admit(connection, None, FieldValidation::Strict).expect("valid");
    let spec = &admitted.object["spec"];
    assert_eq!(spec["pageSize"], 500);
    assert_eq!(spec["requestTimeoutSeconds"], 30);
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["importSafeguard"]["maxDeletePercent"], 20);
    assert_eq!(spec["schedule"]["cron"], json!(["0 3 * * *"]));
    assert_eq!(spec["schedule"]["timeZone"], "UTC");
    assert_eq!(spec["provider"]["csv"]["delimiter"], ",");
}

#[test]
fn nested_defaults_fill_a_partly_given_object() {
    let profile = json!({
        "apiVersion": "idsync.dev/v1alpha1", "kind": "IdentityProfile", "metadata": {"name": "p"},
        "spec": {"authoritativeConnection": "hris", "schedule": {"cron": ["0 6 * * 1"]}}
    });
    let admitted = validator("IdentityProfile").admit(profile, None, FieldValidation::Strict).expect("valid");
    assert_eq!(admitted.object["spec"]["schedule"]["timeZone"], "America/Chicago");
    assert_eq!(admitted.object["spec"]["applyPolicy"], "Automatic");
}

#[test]
fn unknown_fields_are_pruned_with_a_warning_unless_strict() {
    let object = resync(json!({"target": {"all": true}, "colour": "blue"}));
    let v = validator("ResyncRequest");
    let admitted = v.admit(object.clone(), None, FieldValidation::Warn).expect("admitted");
    assert!(admitted.object["spec"].get("colour").is_none());
    assert_eq!(admitted.warnings, vec![r#"unknown field "spec.colour""#.to_string()]);
    let ignored = v.admit(object.clone(), None, FieldValidation::Ignore).expect("admitted");
    assert!(ignored.warnings.is_empty());
    let refused = v.admit(object, None, FieldValidation::Strict).expect_err("strict refuses");
    assert_eq!(refused.errors[0].error_type, ErrorType::Unknown);
    assert_eq!(refused.to_string(), r#"ResyncRequest.idsync.dev "r1" is invalid: unknown field "spec.colour""#);
}

#[test]
fn metadata_and_status_survive_pruning() {
    let mut object = resync(json!({"target": {"all": true}}));
    object["metadata"]["labels"] = json!({"team": "security"});
    object["status"] = json!({"phase": "Running"});
    let admitted = validator("ResyncRequest").admit(object, None, FieldValidation::Strict).expect("valid");
    assert_eq!(admitted.object["metadata"]["labels"]["team"], "security");
    assert_eq!(admitted.object["status"]["phase"], "Running");
}

#[test]
fn a_resync_request_spec_cannot_change_after_creation() {
    let v = validator("ResyncRequest");
    let old = v.admit(resync(json!({"target": {"all": true}})), None, FieldValidation::Strict).expect("valid").object;

    let same = v.admit(old.clone(), Some(&old), FieldValidation::Strict);
    assert!(same.is_ok(), "an unchanged spec is a valid update: {same:?}");

    let mut changed = old.clone();
    changed["spec"]["mode"] = json!("Full");
    let refused = v.admit(changed, Some(&old), FieldValidation::Strict).expect_err("immutable");
    assert_eq!(refused.errors.len(), 1);
    assert_eq!(refused.errors[0].field, "spec");
    assert!(refused.to_string().contains("spec is immutable"), "{refused}");

    let mut status_only = old.clone();
    status_only["status"] = json!({"phase": "Succeeded"});
    assert!(v.admit(status_only, Some(&old), FieldValidation::Strict).is_ok());
}

#[test]
fn several_errors_are_all_reported_in_one_answer() {
    let object = resync(json!({"target": {"all": true}, "mode": "Sometimes", "concurrencyPolicy": "Never"}));
    let refused = validator("ResyncRequest").admit(object, None, FieldValidation::Strict).expect_err("invalid");
    let fields: Vec<&str> = refused.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["spec.concurrencyPolicy", "spec.mode"]);
    let text = refused.to_string();
    assert!(
        text.starts_with(
            r#"ResyncRequest.idsync.dev "r1" is invalid: [spec.concurrencyPolicy: Unsupported value: "Never""#
        ),
        "{text}"
    );
    assert_eq!(refused.errors[0].reason(), "FieldValueNotSupported");
}

#[test]
fn a_provider_union_that_bypassed_the_schema_does_not_decode() {
    let spec = json!({"category": "IdP", "provider": {"type": "okta", "csv": {
        "source": {"url": "https://hr.example.com/x.csv"}, "idColumn": "id"}}});
    let error = serde_json::from_value::<idsync_api::ConnectionSpec>(spec).expect_err("mismatch");
    assert!(error.to_string().contains("provider.type is okta but provider.okta is not set"), "{error}");
}

#[test]
fn a_crd_whose_rule_does_not_compile_is_refused() {
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "x-kubernetes-validations": [{"rule": "self.a ==", "message": "broken"}]}}});
    let error = SchemaValidator::from_schema("Thing.example.com", schema, "things.example.com").expect_err("refused");
    assert!(error.to_string().contains("does not compile"), "{error}");
}

/// Ratcheting, as Kubernetes does since 1.30: a value an older CRD let in
/// may stay while other fields change, but no write may set or change it.
#[test]
fn an_update_may_keep_a_value_the_schema_now_refuses_but_not_change_to_one() {
    let v = validator("Connection");
    let connection = |max_delete_count: Value| {
        json!({
            "apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "metadata": {"name": "hris"},
            "spec": {"category": "HRIS", "importSafeguard": {"maxDeleteCount": max_delete_count},
                     "provider": {"type": "csv", "csv": {
                "source": {"configMapKeyRef": {"name": "hris-export", "key": "people.csv"}}, "idColumn": "id"}}}
        })
    };
    let stored = connection(json!(1e23));
    let created = v.admit(stored.clone(), None, FieldValidation::Strict).expect_err("too large to create");
    assert_eq!(created.errors[0].field, "spec.importSafeguard.maxDeleteCount");

    let mut labelled = stored.clone();
    labelled["metadata"]["labels"] = json!({"team": "people"});
    labelled["status"] = json!({"conditions": []});
    assert!(v.admit(labelled, Some(&stored), FieldValidation::Strict).is_ok(), "unchanged, it ratchets");

    let changed = connection(json!(2e23));
    let refused = v.admit(changed, Some(&stored), FieldValidation::Strict).expect_err("a new bad value");
    assert_eq!(refused.errors[0].field, "spec.importSafeguard.maxDeleteCount");
    assert!(v.admit(connection(json!(10)), Some(&stored), FieldValidation::Strict).is_ok(), "the fix is accepted");
}
