//! The user documentation under docs/ stays true to the code: every
//! condition and Event reason the operator can set is explained in
//! docs/troubleshooting.md (a person who meets one in `kubectl describe`
//! finds it there), and every relative link in docs/ leads to a file that
//! exists, and to a heading of it when it names one.
//!
//! The reasons are read from the source, not listed by hand, so a new one
//! fails this test until it is documented: every PascalCase string literal
//! in the controllers, the connector errors and the sync job (minus the few
//! that are not reasons, in `NOT_REASONS`), and the variants of the enums
//! whose names become reasons (`format!("{outcome:?}")`, a trigger's name).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The code of a source file: without its unit tests (`#[cfg(test)]` then
/// `mod tests`, to the end of the file) and without comment lines.
fn code(relative: &str) -> String {
    let text = read(&root().join(relative));
    let mut kept = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if !line.trim_start().starts_with("//") {
            kept.push(line);
        }
    }
    kept.join("\n")
}

/// The string literals of `code` (`"…"`, escapes kept as written).
fn literals(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = code.chars().peekable();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        // A char literal '"' is not the start of a string.
        if c == '"' && previous != '\'' {
            let mut literal = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        literal.push(c);
                        if let Some(escaped) = chars.next() {
                            literal.push(escaped);
                        }
                    }
                    '"' => break,
                    _ => literal.push(c),
                }
            }
            found.push(literal);
            previous = '"';
        } else {
            previous = c;
        }
    }
    found
}

/// A reason as the API conventions spell one: PascalCase, letters and digits.
fn pascal_case(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

/// PascalCase literals in the scanned files that are not reasons.
const NOT_REASONS: &[(&str, &str)] = &[
    ("Full", "a sync mode"),
    ("Sync", "an Event's action"),
    ("Process", "an Event's action"),
    ("Configure", "an Event's action"),
    ("Decode", "an Event's action"),
    ("Normal", "an Event's type"),
    ("Warning", "an Event's type"),
    ("Opaque", "a Secret's type, quoted in a message"),
    ("ProviderInputs", "a Debug name"),
];

/// Where reasons are set: the controllers (conditions, Events, stall
/// problems), the connector errors' `reason()` and the sync job's report.
fn reason_sources() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("src/controller"))
        .expect("src/controller")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| path.strip_prefix(root()).expect("under the root").to_string_lossy().into_owned())
        .collect();
    files.sort();
    files.push("src/connectors/mod.rs".into());
    files.push("src/sync/job.rs".into());
    files
}

/// The unit variants of `enum <name> {…}` (or of `named!(<name> {…})`).
fn variants(relative: &str, name: &str) -> Vec<String> {
    let text = code(relative);
    let start = [format!("pub enum {name} {{"), format!("named!({name} {{")]
        .iter()
        .find_map(|header| text.find(header.as_str()).map(|at| at + header.len()))
        .unwrap_or_else(|| panic!("no enum {name} in {relative}"));
    let body = &text[start..start + text[start..].find('}').expect("the enum's end")];
    let found: Vec<String> = body
        .split([',', '\n'])
        .map(str::trim)
        .filter(|v| !v.starts_with('#') && pascal_case(v))
        .map(str::to_string)
        .collect();
    assert!(found.len() >= 3, "the variants of {name} in {relative}: {found:?}");
    found
}

/// Every reason the operator can set on a condition or an Event.
fn reasons() -> BTreeSet<String> {
    let skip: BTreeSet<&str> = NOT_REASONS.iter().map(|(literal, _)| *literal).collect();
    let mut reasons: BTreeSet<String> = reason_sources()
        .iter()
        .flat_map(|file| literals(&code(file)))
        .filter(|l| pascal_case(l) && !skip.contains(l.as_str()))
        .collect();
    // Reasons made from enum names: a sync's outcome (`{outcome:?}`), a
    // request's phase (`{phase:?}`) and a processing run's trigger.
    reasons.extend(variants("crates/idsync-api/src/connection.rs", "SyncOutcome"));
    reasons.extend(variants("crates/idsync-api/src/resync_request.rs", "Phase"));
    reasons.extend(variants("src/model/run.rs", "Trigger"));
    reasons
}

#[test]
fn every_reason_the_operator_sets_is_explained_in_troubleshooting() {
    let reasons = reasons();
    // The extraction itself works: reasons of each kind and each source.
    for known in [
        "SecretNotFound",
        "InvalidSchedule",
        "SyncStarted",
        "Unauthorized",
        "DeadlineExceeded",
        "TargetNotResolved",
        "ResyncPartiallyFailed",
        "ExpressionTooComplex",
        "InvalidSpec",
        "PartiallyFailed",
        "Interrupted",
        "EventBased",
    ] {
        assert!(reasons.contains(known), "{known} was not found in the source; the extraction is broken");
    }
    assert!(reasons.len() > 60, "only {} reasons found: {reasons:?}", reasons.len());

    let page = read(&root().join("docs/troubleshooting.md"));
    let missing: Vec<&String> = reasons.iter().filter(|r| !page.contains(&format!("`{r}`"))).collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md does not explain these reasons (write each as `Reason`, with what it means and \
         what to do; or, if a literal is no reason, add it to NOT_REASONS in tests/integration/docs.rs): {missing:?}"
    );
}

/// The Markdown files under `dir`, recursively.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(markdown_files(&path));
        } else if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The targets of the inline links `[text](target)` of a Markdown text,
/// outside code: fenced blocks and `code spans` (a regular expression such
/// as `^[a-z]([-a-z]*)?$` is no link).
fn link_targets(markdown: &str) -> Vec<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Between backticks, every other piece is code.
            prose.extend(line.split('`').step_by(2));
            prose.push('\n');
        }
    }
    prose.split("](").skip(1).filter_map(|rest| rest.find(')').map(|end| rest[..end].trim().to_string())).collect()
}

/// The anchors of a Markdown page's headings, as GitHub makes them:
/// lowercase, punctuation dropped, spaces as hyphens. Fenced code is skipped
/// (a shell comment is no heading).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            let title = line.trim_start_matches('#').trim();
            let slug: String = title
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect();
            anchors.insert(slug);
        }
    }
    anchors
}

#[test]
fn every_relative_link_in_docs_leads_to_a_file_and_its_heading() {
    let docs = root().join("docs");
    let files = markdown_files(&docs);
    assert!(files.len() >= 8, "docs/ has {} pages", files.len());
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = read(file);
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let resolved = if path.is_empty() { file.clone() } else { file.parent().expect("a folder").join(path) };
            let found = resolved.exists()
                && (anchor.is_empty()
                    || resolved.extension().is_none_or(|e| e != "md")
                    || anchors(&read(&resolved)).contains(anchor));
            if !found {
                broken.push(format!("{}: {target}", file.strip_prefix(root()).unwrap_or(file).display()));
            }
        }
    }
    assert!(checked >= 40, "only {checked} relative links were found; the link parser is broken");
    assert!(broken.is_empty(), "links to files or headings that do not exist: {broken:#?}");
}

#[test]
fn the_link_parser_and_literal_reader_read_what_they_should() {
    assert_eq!(
        link_targets("see [install](install.md) and [a](../examples/x.yaml#top)."),
        ["install.md", "../examples/x.yaml#top"]
    );
    let code = "[`examples/`](../examples/), matches `^[a-z]([-a-z]*[a-z])?$`\n```\n[no](link.md)\n```\n";
    assert_eq!(link_targets(code), ["../examples/"]);
    let read = literals(r#"set("Ready", "a \"quoted\" word", '"', "Synced")"#);
    assert_eq!(read, ["Ready", r#"a \"quoted\" word"#, "Synced"]);
    assert!(pascal_case("SafeguardTripped") && pascal_case("InsecureTLS"));
    assert!(!pascal_case("TLS") && !pascal_case("ready") && !pascal_case("Not a reason"));
    let headings = anchors(
        "# Install\n## On a laptop: `idsync dev`\n```sh\n# not a heading\n```\n### The operator's own permissions\n",
    );
    let expected: BTreeSet<String> =
        ["install", "on-a-laptop-idsync-dev", "the-operators-own-permissions"].map(String::from).into();
    assert_eq!(headings, expected);
}
