//! The documented JSON schema (`docs/schema/portwatch.schema.json`) and a check of portwatch's
//! output against it: every JSON object a scenario gets from `trace --json`, `who --json` and
//! `demo --json` must validate, or the scenario fails with the line and what is wrong.
//!
//! A small checker of the JSON Schema keywords that file uses (`$ref` to `#/$defs/...`,
//! `type`, `enum`, `const`, `properties`, `required`, `additionalProperties`, `items`,
//! `anyOf`, `minimum`, `maximum`), rather than a validator crate: the `jsonschema` crate pulls
//! in a regex engine and an HTTP client for remote references that this one file never needs.
//! A keyword the checker does not know is an error, so the file cannot say more than is
//! checked. The schema is compiled into the runner, which also runs inside the VMs.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use serde_json::{Map, Value};

/// The schema file, as documented.
const SCHEMA: &str = include_str!("../../../docs/schema/portwatch.schema.json");

/// Keywords that only describe (never checked).
const ANNOTATIONS: &[&str] = &["$schema", "$id", "$defs", "title", "description"];

fn schema() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(SCHEMA).unwrap_or(Value::Null))
}

/// Checks one object portwatch printed against the schema.
pub fn check(v: &Value) -> Result<()> {
    let root = schema();
    if root.is_null() {
        bail!("docs/schema/portwatch.schema.json is not JSON");
    }
    let mut errors = Vec::new();
    validate(root, root, v, "", &mut errors);
    if errors.is_empty() {
        return Ok(());
    }
    bail!(
        "does not match docs/schema/portwatch.schema.json: {}\n  line: {v}",
        errors.join("; ")
    )
}

/// Checks every line of `lines` that is a JSON object (human output lines are skipped).
pub fn check_lines<'a>(lines: impl IntoIterator<Item = &'a String>) -> Result<()> {
    for (i, line) in lines.into_iter().enumerate() {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(line) {
            check(&v).map_err(|e| anyhow::anyhow!("stdout line {}: {e:#}", i + 1))?;
        }
    }
    Ok(())
}

fn resolve<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let name = r.strip_prefix("#/$defs/")?;
    root.get("$defs")?.get(name)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    let actual = type_name(v);
    actual == t || (t == "number" && actual == "integer")
}

fn validate(root: &Value, s: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(s) = s.as_object() else {
        errors.push(format!("{at}: the schema here is not an object"));
        return;
    };
    let here = if at.is_empty() { "(top)" } else { at };
    for (key, want) in s {
        match key.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "$ref" => match want.as_str().and_then(|r| resolve(root, r)) {
                Some(def) => validate(root, def, v, at, errors),
                None => errors.push(format!("{here}: unresolvable $ref {want}")),
            },
            "type" => {
                let ok = match want {
                    Value::String(t) => has_type(v, t),
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| has_type(v, t)),
                    _ => false,
                };
                if !ok {
                    errors.push(format!("{here}: {} is not of type {want}", type_name(v)));
                }
            }
            "enum" => {
                if !want.as_array().is_some_and(|a| a.contains(v)) {
                    errors.push(format!("{here}: {v} is not one of {want}"));
                }
            }
            "const" => {
                if want != v {
                    errors.push(format!("{here}: {v} is not {want}"));
                }
            }
            "minimum" => {
                if let (Some(min), Some(n)) = (want.as_f64(), v.as_f64())
                    && n < min
                {
                    errors.push(format!("{here}: {n} is below {min}"));
                }
            }
            "maximum" => {
                if let (Some(max), Some(n)) = (want.as_f64(), v.as_f64())
                    && n > max
                {
                    errors.push(format!("{here}: {n} is above {max}"));
                }
            }
            "required" => {
                if let (Some(req), Some(obj)) = (want.as_array(), v.as_object()) {
                    for k in req.iter().filter_map(Value::as_str) {
                        if !obj.contains_key(k) {
                            errors.push(format!("{here}: required field {k:?} is missing"));
                        }
                    }
                }
            }
            "properties" => {
                if let (Some(props), Some(obj)) = (want.as_object(), v.as_object()) {
                    for (k, sub) in props {
                        if let Some(x) = obj.get(k) {
                            validate(root, sub, x, &format!("{at}.{k}"), errors);
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(obj) = v.as_object() {
                    additional(root, s, want, obj, at, errors);
                }
            }
            "items" => {
                if let Some(items) = v.as_array() {
                    for (i, x) in items.iter().enumerate() {
                        validate(root, want, x, &format!("{at}.{i}"), errors);
                    }
                }
            }
            "anyOf" => any_of(root, want, v, at, errors),
            other => errors.push(format!(
                "{here}: the schema uses {other:?}, which this checker does not know"
            )),
        }
    }
}

/// `additionalProperties`: false (no field the schema does not name), or a schema every
/// other field must match.
fn additional(
    root: &Value,
    s: &Map<String, Value>,
    want: &Value,
    obj: &Map<String, Value>,
    at: &str,
    errors: &mut Vec<String>,
) {
    let named = s.get("properties").and_then(Value::as_object);
    for (k, x) in obj {
        if named.is_some_and(|p| p.contains_key(k)) {
            continue;
        }
        match want {
            Value::Bool(false) => errors.push(format!(
                "{}: field {k:?} is not in the schema",
                if at.is_empty() { "(top)" } else { at }
            )),
            Value::Bool(true) => {}
            sub => validate(root, sub, x, &format!("{at}.{k}"), errors),
        }
    }
}

/// `anyOf`: one branch must match. When none does, the errors of the branch that came
/// closest (fewest errors) say what is wrong, rather than every branch's.
fn any_of(root: &Value, want: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(branches) = want.as_array() else {
        errors.push(format!("{at}: anyOf is not an array"));
        return;
    };
    let mut best: Option<Vec<String>> = None;
    for b in branches {
        let mut e = Vec::new();
        validate(root, b, v, at, &mut e);
        if e.is_empty() {
            return;
        }
        if best.as_ref().is_none_or(|x| e.len() < x.len()) {
            best = Some(e);
        }
    }
    errors.extend(best.unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::check;

    #[test]
    fn the_schema_file_parses_and_accepts_what_portwatch_writes() {
        check(&json!({"type": "lost", "lost": 3, "total_lost": 5})).unwrap();
        check(&json!({
            "type": "summary", "backend": "fexit", "events": 1, "binds": 1, "listens": 0, "connects": 0,
            "failed": 0, "by_errno": {}, "lost": 0, "unexplained_at_exit": 0, "seconds": 0.5
        }))
        .unwrap();
    }

    #[test]
    fn it_names_what_is_wrong() {
        let e = check(&json!({"type": "lost", "lost": -1, "total_lost": 5, "extra": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"extra\" is not in the schema"), "{e}");
        assert!(e.contains("below 0"), "{e}");
        let e = check(&json!({"type": "lost", "lost": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"total_lost\" is missing"), "{e}");
    }
}
