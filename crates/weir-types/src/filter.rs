//! Subscription filters in Google Pub/Sub's syntax, over a message's attributes:
//!
//! ```text
//! attributes.KEY = "value"      attributes.KEY != "value"      attributes:KEY
//! hasPrefix(attributes.KEY, "prefix")      NOT e      -e      e AND e      e OR e      ( e )
//! ```
//!
//! Keys are identifiers (`[A-Za-z0-9_-]`) or quoted strings; values are quoted strings with
//! `\"` and `\\` escapes. `AND` binds tighter than `OR`. At most `FILTER_BYTES_MAX` bytes.
//!
//! A subscription's filter may instead select on the CloudEvent a message is
//! (`SubscriptionFilter`): Knative Trigger filters as JSON (a list, or one filter object),
//! or `cesql:` followed by a CloudEvents SQL expression.

use std::collections::BTreeMap;

use crate::trigger::{self, TriggerFilter};

/// Google's limit on a filter's length.
pub const FILTER_BYTES_MAX: usize = 256;
/// The limit for CloudEvents filters (Knative Trigger filters, CESQL).
pub const EVENT_FILTER_BYTES_MAX: usize = 4096;

/// What a filter reads of a message.
pub trait Message {
    /// A Pub/Sub attribute.
    fn attribute(&self, key: &str) -> Option<String>;
    /// The CloudEvent context attributes (`crate::pubsub::cloudevent`).
    fn event(&self) -> BTreeMap<String, String>;
}

/// A subscription's filter in one of its dialects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFilter {
    /// Google's syntax over the attributes.
    Attributes(Filter),
    /// Knative Trigger filters (CESQL among them) over the CloudEvent.
    Event(Vec<TriggerFilter>),
}

impl SubscriptionFilter {
    /// `[...]` or `{...}`: Trigger filters; `cesql: EXPR`; anything else Google's syntax.
    pub fn parse(raw: &str) -> Result<SubscriptionFilter, String> {
        let trimmed = raw.trim_start();
        let cesql = trimmed
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case("cesql:"))
            .map(|_| &trimmed[6..]);
        if cesql.is_some() || trimmed.starts_with(['[', '{']) {
            if raw.len() > EVENT_FILTER_BYTES_MAX {
                return Err(format!("longer than {EVENT_FILTER_BYTES_MAX} bytes"));
            }
            return match cesql {
                Some(expr) => crate::cesql::Expression::parse(expr)
                    .map(|e| SubscriptionFilter::Event(vec![TriggerFilter::Cesql(e)]))
                    .map_err(|e| format!("CESQL: {}", e.message)),
                None => trigger::parse(raw).map(SubscriptionFilter::Event),
            };
        }
        Filter::parse(raw).map(SubscriptionFilter::Attributes)
    }

    pub fn matches(&self, m: &dyn Message) -> bool {
        match self {
            SubscriptionFilter::Attributes(f) => f.matches(&|k| m.attribute(k)),
            SubscriptionFilter::Event(fs) => trigger::matches(fs, &m.event()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Equals(String, String),
    NotEquals(String, String),
    Has(String),
    HasPrefix(String, String),
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Dot,
    Colon,
    Eq,
    Ne,
    Open,
    Close,
    Comma,
    Minus,
}

fn tokens(raw: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut it = raw.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '.' => out.push(Token::Dot),
            ':' => out.push(Token::Colon),
            '=' => out.push(Token::Eq),
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            '-' => out.push(Token::Minus),
            '!' => match it.next() {
                Some((_, '=')) => out.push(Token::Ne),
                _ => return Err(format!("'!' at {i} must be followed by '='")),
            },
            '"' => {
                let mut s = String::new();
                loop {
                    match it.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match it.next() {
                            Some((_, c @ ('"' | '\\'))) => s.push(c),
                            _ => return Err(format!("bad escape in the string at {i}")),
                        },
                        Some((_, c)) => s.push(c),
                        None => return Err(format!("the string at {i} is not closed")),
                    }
                }
                out.push(Token::Str(s));
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&(_, c)) = it.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        s.push(c);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Ident(s));
            }
            c => return Err(format!("unexpected {c:?} at {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, want: &Token, what: &str) -> Result<(), String> {
        match self.next() {
            Some(t) if &t == want => Ok(()),
            other => Err(format!("expected {what}, found {other:?}")),
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w == word)
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            self.next();
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            self.next();
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.keyword("NOT") {
            self.next();
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Minus) {
            self.next();
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.next();
            let inner = self.or()?;
            self.expect(&Token::Close, "')'")?;
            return Ok(inner);
        }
        if self.keyword("hasPrefix") {
            self.next();
            self.expect(&Token::Open, "'(' after hasPrefix")?;
            let key = self.attribute()?;
            self.expect(&Token::Comma, "','")?;
            let prefix = self.string()?;
            self.expect(&Token::Close, "')'")?;
            return Ok(Filter::HasPrefix(key, prefix));
        }
        match self.next() {
            Some(Token::Ident(w)) if w == "attributes" => {}
            other => return Err(format!("expected attributes, found {other:?}")),
        }
        match self.next() {
            Some(Token::Colon) => Ok(Filter::Has(self.key()?)),
            Some(Token::Dot) => {
                let key = self.key()?;
                match self.next() {
                    Some(Token::Eq) => Ok(Filter::Equals(key, self.string()?)),
                    Some(Token::Ne) => Ok(Filter::NotEquals(key, self.string()?)),
                    other => Err(format!(
                        "expected = or != after attributes.{key}, found {other:?}"
                    )),
                }
            }
            other => Err(format!(
                "expected '.' or ':' after attributes, found {other:?}"
            )),
        }
    }

    fn attribute(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(w)) if w == "attributes" => {}
            other => return Err(format!("expected attributes, found {other:?}")),
        }
        self.expect(&Token::Dot, "'.'")?;
        self.key()
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) | Some(Token::Str(k)) => Ok(k),
            other => Err(format!("expected an attribute key, found {other:?}")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            other => Err(format!("expected a quoted string, found {other:?}")),
        }
    }
}

impl Filter {
    /// Parses a filter; the error says where it went wrong.
    pub fn parse(raw: &str) -> Result<Filter, String> {
        if raw.len() > FILTER_BYTES_MAX {
            return Err(format!("longer than {FILTER_BYTES_MAX} bytes"));
        }
        let mut p = Parser {
            tokens: tokens(raw)?,
            at: 0,
        };
        let f = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!("unexpected {t:?} after the expression"));
        }
        Ok(f)
    }

    /// Whether a message with these attributes passes.
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Filter::Equals(k, v) => get(k).is_some_and(|x| &x == v),
            Filter::NotEquals(k, v) => get(k).is_none_or(|x| &x != v),
            Filter::Has(k) => get(k).is_some(),
            Filter::HasPrefix(k, p) => get(k).is_some_and(|x| x.starts_with(p.as_str())),
            Filter::Not(f) => !f.matches(get),
            Filter::And(a, b) => a.matches(get) && b.matches(get),
            Filter::Or(a, b) => a.matches(get) || b.matches(get),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(filter: &str, attrs: &[(&str, &str)]) -> bool {
        let f = Filter::parse(filter).expect(filter);
        f.matches(&|k| {
            attrs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn googles_examples() {
        let a = [("domain", "com"), ("kind", "order-created"), ("x", "1")];
        let cases = [
            (r#"attributes.domain = "com""#, true),
            (r#"attributes.domain != "com""#, false),
            (r#"attributes.missing != "com""#, true),
            ("attributes:domain", true),
            ("NOT attributes:domain", false),
            ("-attributes:missing", true),
            (r#"hasPrefix(attributes.kind, "order-")"#, true),
            (r#"hasPrefix(attributes.missing, "")"#, false),
            (r#"attributes.domain = "com" AND attributes:x"#, true),
            (r#"attributes.domain = "org" OR attributes.x = "1""#, true),
            (
                r#"(attributes.domain = "org" OR attributes.x = "1") AND NOT attributes:y"#,
                true,
            ),
            (
                r#"attributes.domain = "org" OR attributes.x = "2" AND attributes:x"#,
                false,
            ),
            (r#"attributes."domain" = "com""#, true),
        ];
        for (f, want) in cases {
            assert_eq!(eval(f, &a), want, "{f}");
        }
    }

    #[test]
    fn bad_filters_say_why() {
        for bad in [
            "",
            "attributes",
            "attributes.k = value",
            r#"attributes.k = "v" AND"#,
            r#"(attributes:k"#,
            r#"attributes.k == "v""#,
            r#"attributes.k = "v" attributes:x"#,
            r#"hasPrefix(attributes.k "p")"#,
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        assert!(Filter::parse(&format!("attributes:{}", "k".repeat(300))).is_err());
    }
}
