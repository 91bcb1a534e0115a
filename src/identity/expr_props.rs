//! The generated bad-input corpus of CEL compilation: a profile's
//! expressions are whatever a person (or a pipeline) applies, up to the
//! CRD's 4096 characters, so compiling them must answer for any string.
//! Through the public compile entry point only; a bounded number of cases.
//!
//! What must hold: nothing panics; a refusal names the field and the
//! expression it refuses, each mistake once, every field in order.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::expr::CompiledProfile;
use idsync_api::identity_profile::Lifecycle;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Pieces of CEL: names the checker knows and does not, operators,
/// literals at the ends of their ranges, broken quotes and escapes.
fn token() -> impl Strategy<Value = String> {
    let fixed = vec![
        "accounts",
        "accounts.hr",
        "accounts['acme-hr']",
        "now",
        "has(",
        "date(",
        "size(",
        ".map(",
        ".filter(",
        ".all(",
        ".exists(",
        ".exists_one(",
        ".lowerAscii()",
        ".split(",
        ".join(",
        ".matches(",
        "int(",
        "uint(",
        "double(",
        "string(",
        "bytes(",
        "timestamp(",
        "duration(",
        "dyn(",
        "type(",
        "optional.of(",
        ".?",
        "null",
        "true",
        "false",
        " in ",
        "x",
        "e",
        "google.protobuf.Int64Value{",
        "Msg{",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ".",
        ",",
        ":",
        "?",
        "!",
        "-",
        "+",
        "*",
        "/",
        "%",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "&&",
        "||",
        " ",
        "\n",
        "1",
        "0u",
        "1.5",
        "1e308",
        "-1e-400",
        "0x7FFFFFFFFFFFFFFF",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616u",
        "'a'",
        "\"b\"",
        "b'\\xff'",
        "r'\\d'",
        "'''x'''",
        "\"\"\"",
        "'",
        "\"",
        "\\",
        "'\\u00'",
        "'\\U0010FFFF'",
        "'\\777'",
        "@result",
        "__result__",
        "`",
    ];
    prop_oneof![
        8 => prop::sample::select(fixed).prop_map(String::from),
        1 => ".{0,3}",
    ]
}

/// An expression: a soup of CEL pieces, any text at all, or the two shapes
/// the `cel` 0.13 parser does not survive on its own (compiling refuses them
/// or parses them where they cannot hurt, see `expr::limits`): brackets
/// nested deep, which overflow a 2 MiB stack in a debug build at 15; and a
/// long chain of conditionals, which makes its recursion guard subtract
/// below zero (`cel-0.13.0/src/parser/parser.rs:405`).
fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(token(), 0..400).prop_map(|tokens| tokens.concat()),
        1 => "\\PC{0,1024}",
        1 => any::<String>(),
        1 => (1usize..200, prop::sample::select(vec![("(", ")"), ("[", "]"), ("{1:", "}")]))
            .prop_map(|(depth, (open, close))| format!("{}1{}", open.repeat(depth), close.repeat(depth))),
        1 => (1usize..300).prop_map(|n| format!("{}1", "true?1:".repeat(n))),
    ]
}

/// Compiles `attributes` and `lifecycle`; checks what any refusal says.
fn compile_checked(attributes: &BTreeMap<String, String>, lifecycle: Option<&Lifecycle>) -> Result<(), TestCaseError> {
    match CompiledProfile::compile(attributes, lifecycle) {
        Ok(compiled) => {
            let names: Vec<&str> = compiled.attribute_names().collect();
            let expected: Vec<&str> = attributes.keys().map(String::as_str).collect();
            prop_assert_eq!(names, expected);
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty(), "refused without a reason");
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            let mut sorted = fields.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&fields, &sorted, "fields out of order or repeated");
            for error in &errors {
                let source = match error.field.strip_prefix("spec.attributes.") {
                    Some(name) => attributes.get(name),
                    None => lifecycle.filter(|_| error.field == "spec.lifecycle.expression").map(|l| &l.expression),
                };
                prop_assert_eq!(Some(&error.expression), source, "{} names another expression", error.field);
                prop_assert!(!error.problem.to_string().is_empty(), "{}: an empty message", error.field);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(384))]

    /// Any string as an attribute's expression compiles or is refused by
    /// name; never a panic.
    #[test]
    fn any_expression_compiles_or_is_refused_by_name(source in expression()) {
        let attributes = BTreeMap::from([("attr".to_string(), source)]);
        compile_checked(&attributes, None)?;
    }

    /// Several expressions and a lifecycle at once: every refusal is
    /// reported, in field order, each naming its own expression.
    #[test]
    fn a_whole_profile_of_hostile_expressions_is_refused_field_by_field(
        attributes in prop::collection::btree_map("[a-z]{1,6}", expression(), 0..4),
        lifecycle in prop::option::of(expression()),
    ) {
        let lifecycle = lifecycle.map(|expression| Lifecycle {
            expression,
            states: vec!["active".to_string(), "terminated".to_string()],
        });
        compile_checked(&attributes, lifecycle.as_ref())?;
    }
}
