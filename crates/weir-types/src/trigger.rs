//! Knative Trigger filters over a CloudEvent's context attributes, as a Trigger's `filters`
//! list is written (JSON here):
//!
//! ```text
//! [{"exact": {"type": "com.example.created"}},
//!  {"any": [{"prefix": {"source": "/orders/"}}, {"suffix": {"subject": ".pdf"}}]},
//!  {"not": {"exact": {"priority": "low"}}},
//!  {"cesql": "INT(size) > 1024"}]
//! ```
//!
//! Every filter in the list must pass. `exact`, `prefix` and `suffix` take attribute → value
//! (each must match; a missing attribute does not); `all` and `any` take a non-empty list;
//! `not` one filter; `cesql` a CloudEvents SQL expression (`crate::cesql`), which passes only
//! on `true` without an error.

use std::collections::BTreeMap;

use crate::cesql::{self, Expression};

/// The most filters (nested ones counted) one subscription may have.
pub const FILTERS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerFilter {
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<TriggerFilter>),
    Any(Vec<TriggerFilter>),
    Not(Box<TriggerFilter>),
    Cesql(Expression),
}

fn attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

struct Parse {
    count: usize,
}

impl Parse {
    fn list(&mut self, v: &serde_json::Value, at: &str) -> Result<Vec<TriggerFilter>, String> {
        let items = v
            .as_array()
            .ok_or_else(|| format!("{at}: must be a list of filters"))?;
        if items.is_empty() {
            return Err(format!("{at}: must hold at least one filter"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, f)| self.filter(f, &format!("{at}[{i}]")))
            .collect()
    }

    fn attributes(v: &serde_json::Value, at: &str) -> Result<Vec<(String, String)>, String> {
        let map = v
            .as_object()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| format!("{at}: must map attribute names to values"))?;
        map.iter()
            .map(|(k, v)| {
                if !attribute_name(k) {
                    return Err(format!(
                        "{at}: {k:?} is not an attribute name (lowercase letters and digits)"
                    ));
                }
                match v.as_str() {
                    Some(s) if !s.is_empty() => Ok((k.clone(), s.to_string())),
                    _ => Err(format!("{at}.{k}: must be a non-empty string")),
                }
            })
            .collect()
    }

    fn filter(&mut self, v: &serde_json::Value, at: &str) -> Result<TriggerFilter, String> {
        self.count += 1;
        if self.count > FILTERS_MAX {
            return Err(format!("more than {FILTERS_MAX} filters"));
        }
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{at}: must be an object with one dialect"))?;
        let mut entries = obj.iter();
        let (Some((dialect, body)), None) = (entries.next(), entries.next()) else {
            return Err(format!(
                "{at}: must name exactly one of exact, prefix, suffix, all, any, not, cesql"
            ));
        };
        let at = format!("{at}.{dialect}");
        Ok(match dialect.as_str() {
            "exact" => TriggerFilter::Exact(Self::attributes(body, &at)?),
            "prefix" => TriggerFilter::Prefix(Self::attributes(body, &at)?),
            "suffix" => TriggerFilter::Suffix(Self::attributes(body, &at)?),
            "all" => TriggerFilter::All(self.list(body, &at)?),
            "any" => TriggerFilter::Any(self.list(body, &at)?),
            "not" => TriggerFilter::Not(Box::new(self.filter(body, &at)?)),
            "cesql" => {
                let raw = body
                    .as_str()
                    .ok_or_else(|| format!("{at}: must be a string"))?;
                TriggerFilter::Cesql(
                    Expression::parse(raw).map_err(|e| format!("{at}: {}", e.message))?,
                )
            }
            other => {
                return Err(format!(
                    "{at}: unknown dialect {other:?} (exact, prefix, suffix, all, any, not, cesql)"
                ));
            }
        })
    }
}

/// Parses a Trigger's `filters` (a JSON list) or one filter (a JSON object).
pub fn parse(raw: &str) -> Result<Vec<TriggerFilter>, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut p = Parse { count: 0 };
    if v.is_array() {
        p.list(&v, "filters")
    } else {
        Ok(vec![p.filter(&v, "filters")?])
    }
}

impl TriggerFilter {
    /// Whether the event with these context attributes passes.
    pub fn matches(&self, event: &BTreeMap<String, String>) -> bool {
        let each = |pairs: &[(String, String)], test: fn(&str, &str) -> bool| {
            pairs
                .iter()
                .all(|(k, want)| event.get(k).is_some_and(|v| test(v, want)))
        };
        match self {
            TriggerFilter::Exact(p) => each(p, |v, w| v == w),
            TriggerFilter::Prefix(p) => each(p, |v, w| v.starts_with(w)),
            TriggerFilter::Suffix(p) => each(p, |v, w| v.ends_with(w)),
            TriggerFilter::All(fs) => fs.iter().all(|f| f.matches(event)),
            TriggerFilter::Any(fs) => fs.iter().any(|f| f.matches(event)),
            TriggerFilter::Not(f) => !f.matches(event),
            TriggerFilter::Cesql(e) => e.matches(event as &dyn cesql::Event),
        }
    }
}

/// Whether every filter of the list passes.
pub fn matches(filters: &[TriggerFilter], event: &BTreeMap<String, String>) -> bool {
    filters.iter().all(|f| f.matches(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dialects_combine_as_knative_does() {
        let f = parse(
            r#"[{"exact": {"type": "com.example.created"}},
                {"any": [{"prefix": {"source": "/orders/"}}, {"suffix": {"subject": ".pdf"}}]},
                {"not": {"exact": {"priority": "low"}}},
                {"cesql": "INT(size) > 1024"}]"#,
        )
        .expect("valid");
        let ok = event(&[
            ("type", "com.example.created"),
            ("source", "/orders/7"),
            ("size", "2048"),
        ]);
        assert!(matches(&f, &ok));
        let mut low = ok.clone();
        low.insert("priority".into(), "low".into());
        assert!(!matches(&f, &low));
        let mut small = ok.clone();
        small.insert("size".into(), "12".into());
        assert!(!matches(&f, &small));
        let mut pdf = ok.clone();
        pdf.insert("source".into(), "/invoices/1".into());
        assert!(!matches(&f, &pdf));
        pdf.insert("subject".into(), "a.pdf".into());
        assert!(matches(&f, &pdf));
        // a missing attribute: exact fails, and so does CESQL (an error)
        assert!(!matches(&f, &event(&[("type", "com.example.created")])));
        assert!(matches(
            &parse(r#"{"suffix": {"type": ".created"}}"#).expect("valid"),
            &ok
        ));
    }

    #[test]
    fn bad_filters_say_where() {
        for (raw, says) in [
            ("[", "not valid JSON"),
            ("[]", "at least one filter"),
            (r#"[{"exact": {"Type": "x"}}]"#, "filters[0].exact"),
            (r#"[{"exact": {"type": ""}}]"#, "filters[0].exact.type"),
            (
                r#"[{"exact": {"a": "b"}, "prefix": {"a": "b"}}]"#,
                "exactly one",
            ),
            (r#"[{"regex": {"a": "b"}}]"#, "unknown dialect"),
            (
                r#"[{"all": [{"cesql": "a LIKE 1"}]}]"#,
                "filters[0].all[0].cesql",
            ),
            (r#"{"not": {"any": []}}"#, "filters.not.any"),
        ] {
            let e = parse(raw).expect_err(raw);
            assert!(e.contains(says), "{raw}: {e}");
        }
        let deep = format!(
            "{}{{\"exact\": {{\"a\": \"b\"}}}}{}",
            "{\"not\": ".repeat(70),
            "}".repeat(70)
        );
        assert!(parse(&deep).expect_err("too many").contains("more than"));
    }
}
