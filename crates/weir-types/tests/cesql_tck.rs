//! The CloudEvents SQL TCK (`tests/cesql-tck/`, vendored from cloudevents/spec): every case
//! must pass — value and error kind.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value as Yaml;
use weir_types::cesql::{self, ErrorKind, Value};

fn value(y: &Yaml) -> Option<Value> {
    match y {
        Yaml::Bool(b) => Some(Value::Bool(*b)),
        Yaml::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Value::Int),
        Yaml::String(s) => Some(Value::Str(s.clone())),
        _ => None,
    }
}

fn error_kind(name: &str) -> ErrorKind {
    match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        other => panic!("the TCK names an unknown error kind {other}"),
    }
}

fn attributes(y: &Yaml, into: &mut BTreeMap<String, Value>) {
    if let Yaml::Mapping(m) = y {
        for (k, v) in m {
            let k = k.as_str().expect("attribute names are strings").to_string();
            into.insert(k, value(v).expect("attribute values are scalars"));
        }
    }
}

#[test]
fn every_tck_case_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cesql-tck");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the TCK directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 14, "the 14 TCK files");
    let (mut cases, mut failures) = (0, Vec::new());
    for file in &files {
        let doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(file).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let tests = doc["tests"].as_sequence().expect("tests");
        for t in tests {
            cases += 1;
            let name = t["name"].as_str().expect("name");
            let expression = match &t["expression"] {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                Yaml::Bool(b) => b.to_string(),
                other => panic!("{name}: expression {other:?}"),
            };
            // any valid event, unless the case gives one
            let mut event = BTreeMap::new();
            if t["event"].is_mapping() {
                attributes(&t["event"], &mut event);
            } else {
                for (k, v) in [
                    ("specversion", "1.0"),
                    ("id", "an-id"),
                    ("source", "/a/source"),
                    ("type", "a.type"),
                ] {
                    event.insert(k.to_string(), Value::Str(v.to_string()));
                }
            }
            attributes(&t["eventOverrides"], &mut event);
            let (got, err) = cesql::evaluate(&expression, &event);
            let want_error = t["error"].as_str().map(error_kind);
            let want = value(&t["result"]);
            let value_ok = want.as_ref().is_none_or(|w| *w == got);
            let error_ok = err.as_ref().map(|e| e.kind) == want_error;
            if !value_ok || !error_ok {
                failures.push(format!(
                    "{}: {name}: `{expression}` gave {got:?} {err:?}, want {want:?} {want_error:?}",
                    file.file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default()
                ));
            }
        }
    }
    println!(
        "CESQL TCK: {} of {cases} cases pass",
        cases - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
