//! A policy's parameters: the objects of its `paramKind` its binding's
//! `paramRef` names (by name, or by label selector), as the API server
//! collects them. The policy is evaluated once per parameter.

use serde_json::Value;

use super::labels;
use super::matching::selector_matches;
use crate::api::State;

/// The parameters to evaluate a policy with: `[None]` when it takes none
/// (no `paramKind`, or a binding without `paramRef`), possibly empty when
/// none are found and the binding allows that. An error is a
/// misconfigured binding, for the failure policy to decide.
pub fn collect(state: &State, policy: &Value, binding: &Value, namespace: &str) -> Result<Vec<Option<Value>>, String> {
    let (Some(kind), Some(reference)) = (policy.pointer("/spec/paramKind"), binding.pointer("/spec/paramRef")) else {
        return Ok(vec![None]);
    };
    let text = |value: &Value, field: &str| value.get(field).and_then(Value::as_str).unwrap_or_default().to_string();
    let (api_version, kind_name) = (text(kind, "apiVersion"), text(kind, "kind"));
    let Some(rt) = state.registry.find_kind(&api_version, &kind_name) else {
        return Err(format!("paramKind kind `&ParamKind{{APIVersion:{api_version},Kind:{kind_name},}}` not known"));
    };
    let wanted_namespace = text(reference, "namespace");
    let params_namespace = if rt.namespaced {
        match (wanted_namespace.as_str(), namespace) {
            ("", "") => {
                return Err(
                    "cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".into()
                );
            }
            ("", request_namespace) => request_namespace.to_string(),
            (given, _) => given.to_string(),
        }
    } else if !wanted_namespace.is_empty() {
        return Err("paramRef.namespace must not be provided for a cluster-scoped `paramKind`".into());
    } else {
        String::new()
    };
    let name = text(reference, "name");
    let selector = reference.get("selector").filter(|s| !s.is_null());
    let params: Vec<Value> = match (name.as_str(), selector) {
        ("", None) => return Err("one of name or selector must be provided".into()),
        ("", Some(selector)) => state
            .store
            .list(&rt.storage_key, Some(&params_namespace))
            .filter(|object| selector_matches(Some(selector), &labels(object)))
            .cloned()
            .collect(),
        (name, None) => state.store.get(&rt.storage_key, &params_namespace, name).cloned().into_iter().collect(),
        (_, Some(_)) => return Err("paramRef.name and paramRef.selector are mutually exclusive".into()),
    };
    if params.is_empty() && text(reference, "parameterNotFoundAction") == "Deny" {
        return Err("no params found for policy binding with `Deny` parameterNotFoundAction".into());
    }
    // Stored objects lack nothing CEL reads, but a parameter of a kind
    // served in several versions shows the one the policy asked for.
    Ok(params
        .into_iter()
        .map(|mut param| {
            param["apiVersion"] = Value::String(api_version.clone());
            param["kind"] = Value::String(kind_name.clone());
            Some(param)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use crate::store::{EventType, Store};
    use serde_json::json;
    use std::time::Duration;

    fn state_with_config_maps() -> State {
        let mut store = Store::new(100, Duration::from_secs(60));
        for (ns, name, tier) in
            [("default", "gold", "gold"), ("default", "silver", "silver"), ("other", "gold", "gold")]
        {
            let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "namespace": ns, "labels": {"tier": tier}}});
            store.put("configmaps", ns, name, object, EventType::Added);
        }
        State { registry: Registry::with_builtins(), store }
    }

    fn policy() -> Value {
        json!({"spec": {"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"}}})
    }

    fn binding(reference: Value) -> Value {
        json!({"spec": {"paramRef": reference}})
    }

    fn names(params: Vec<Option<Value>>) -> Vec<String> {
        params.iter().flatten().map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn a_named_parameter_comes_from_the_request_namespace_unless_the_binding_names_one() {
        let state = state_with_config_maps();
        let by_name = binding(json!({"name": "gold"}));
        let found = collect(&state, &policy(), &by_name, "other").expect("found");
        assert_eq!(found[0].as_ref().map(|p| p["metadata"]["namespace"].clone()), Some(json!("other")));
        let elsewhere = binding(json!({"name": "silver", "namespace": "default"}));
        assert_eq!(names(collect(&state, &policy(), &elsewhere, "other").expect("found")), vec!["silver"]);
        let cluster_scoped = collect(&state, &policy(), &by_name, "");
        assert_eq!(
            cluster_scoped,
            Err("cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".into())
        );
    }

    #[test]
    fn a_selector_gives_every_matching_parameter_and_none_found_follows_the_not_found_action() {
        let state = state_with_config_maps();
        let everything = binding(json!({"selector": {}, "namespace": "default"}));
        assert_eq!(names(collect(&state, &policy(), &everything, "x").expect("found")), vec!["gold", "silver"]);
        let silver = binding(json!({"selector": {"matchLabels": {"tier": "silver"}}}));
        assert_eq!(names(collect(&state, &policy(), &silver, "default").expect("found")), vec!["silver"]);
        let allow = binding(json!({"name": "bronze", "parameterNotFoundAction": "Allow"}));
        assert_eq!(collect(&state, &policy(), &allow, "default"), Ok(vec![]));
        let deny = binding(json!({"name": "bronze", "parameterNotFoundAction": "Deny"}));
        assert_eq!(
            collect(&state, &policy(), &deny, "default"),
            Err("no params found for policy binding with `Deny` parameterNotFoundAction".into())
        );
    }

    #[test]
    fn without_param_kind_or_param_ref_the_policy_runs_once_without_params() {
        let state = state_with_config_maps();
        assert_eq!(collect(&state, &json!({"spec": {}}), &binding(json!({"name": "gold"})), "default"), Ok(vec![None]));
        assert_eq!(collect(&state, &policy(), &json!({"spec": {}}), "default"), Ok(vec![None]));
        let unknown = json!({"spec": {"paramKind": {"apiVersion": "example.com/v1", "kind": "Limits"}}});
        let error = collect(&state, &unknown, &binding(json!({"name": "x"})), "default").expect_err("unknown kind");
        assert!(error.ends_with("not known"), "{error}");
    }
}
