//! CloudEvents SQL (CESQL) v1: a parser and evaluator for expressions over a CloudEvent's
//! context attributes, as Knative Triggers and the CloudEvents Subscriptions API filter with.
//!
//! ```text
//! EXISTS subject AND type LIKE 'com.example.%' AND INT(priority) > 3
//! source IN ('a', 'b') OR NOT (LOWER(subject) = 'x')
//! ```
//!
//! Keywords and function names are case-insensitive; attribute names are lowercase letters
//! and digits. Integers are 32-bit. Precedence, tightest first: function calls, `NOT` and
//! unary `-`, `LIKE`, `EXISTS`, `IN`, `* / %`, `+ -`, comparisons, then `AND`/`OR`/`XOR`
//! (equal, right-associative).
//!
//! Every expression is total: evaluation always yields a value, and an error when something
//! went wrong. An operator whose operand failed returns its type's zero value (`false`, `0`,
//! `""`) with that error (fail-fast); a failed cast yields the target type's zero value and
//! the operator carries on with it. As a filter, an event passes only on `true` without an
//! error.

use std::fmt;

/// An expression longer than this is refused at parse time.
pub const EXPRESSION_BYTES_MAX: usize = 4096;
/// Nesting deeper than this is refused at parse time (evaluation recurses).
const DEPTH_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i32),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Bool,
    Int,
    Str,
}

impl Type {
    fn zero(self) -> Value {
        match self {
            Type::Bool => Value::Bool(false),
            Type::Int => Value::Int(0),
            Type::Str => Value::Str(String::new()),
        }
    }
}

impl Value {
    pub fn kind(&self) -> Type {
        match self {
            Value::Bool(_) => Type::Bool,
            Value::Int(_) => Type::Int,
            Value::Str(_) => Type::Str,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => f.write_str(s),
        }
    }
}

/// The kinds of error CESQL defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingAttribute,
    MissingFunction,
    FunctionEvaluation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} error: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error {
        kind,
        message: message.into(),
    }
}

/// What an expression reads: the event's context attributes and extensions by name.
pub trait Event {
    fn attribute(&self, name: &str) -> Option<Value>;
}

impl Event for std::collections::BTreeMap<String, Value> {
    fn attribute(&self, name: &str) -> Option<Value> {
        self.get(name).cloned()
    }
}

impl Event for std::collections::BTreeMap<String, String> {
    fn attribute(&self, name: &str) -> Option<Value> {
        self.get(name).map(|v| Value::Str(v.clone()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
}

/// One piece of a `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Glob {
    Char(char),
    /// `_`
    One,
    /// `%`
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Lit(Value),
    Attr(String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Like(Box<Expr>, Vec<Glob>, bool),
    Exists(String),
    In(Box<Expr>, Vec<Expr>, bool),
    Call(String, Vec<Expr>),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    root: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Int(i64),
    Str(String),
    Op(&'static str),
}

fn lex(raw: &str) -> Result<Vec<Tok>, Error> {
    let parse = |m: String| error(ErrorKind::Parse, m);
    let chars: Vec<char> = raw.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.bytes().all(|b| b.is_ascii_digit()) {
                let n = word
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n <= i64::from(i32::MAX) + 1)
                    .ok_or_else(|| parse(format!("integer {word} out of the 32-bit range")))?;
                out.push(Tok::Int(n));
            } else {
                out.push(Tok::Word(word));
            }
        } else if c == '\'' || c == '"' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(parse(format!("unterminated string starting at {quote}"))),
                    Some('\\') if chars.get(i + 1) == Some(&quote) => {
                        s.push(quote);
                        i += 2;
                    }
                    Some(&ch) if ch == quote => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = match two.as_str() {
                "!=" => Some("!="),
                "<>" => Some("<>"),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(op) = op {
                out.push(Tok::Op(op));
                i += 2;
                continue;
            }
            let op = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '+' => "+",
                '-' => "-",
                '*' => "*",
                '/' => "/",
                '%' => "%",
                other => return Err(parse(format!("unexpected character {other:?}"))),
            };
            out.push(Tok::Op(op));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    depth: usize,
}

fn parse_error(m: impl Into<String>) -> Error {
    error(ErrorKind::Parse, m)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.at + n)
    }

    fn keyword_at(&self, n: usize, kw: &str) -> bool {
        matches!(self.peek_at(n), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn op_at(&self, n: usize, op: &str) -> bool {
        matches!(self.peek_at(n), Some(Tok::Op(o)) if *o == op)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, op: &str) -> Result<(), Error> {
        if self.op_at(0, op) {
            self.at += 1;
            Ok(())
        } else {
            Err(parse_error(format!(
                "expected {op}, found {}",
                describe(self.peek())
            )))
        }
    }

    fn nest(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(parse_error(format!("nested deeper than {DEPTH_MAX}")));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Expr, Error> {
        self.nest()?;
        let left = self.comparison()?;
        let op = if self.keyword_at(0, "AND") {
            Some(BinOp::And)
        } else if self.keyword_at(0, "OR") {
            Some(BinOp::Or)
        } else if self.keyword_at(0, "XOR") {
            Some(BinOp::Xor)
        } else {
            None
        };
        let out = match op {
            Some(op) => {
                self.at += 1;
                let right = self.expression()?;
                Expr::Bin(op, Box::new(left), Box::new(right))
            }
            None => left,
        };
        self.depth -= 1;
        Ok(out)
    }

    fn comparison(&mut self) -> Result<Expr, Error> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("=")) => BinOp::Eq,
                Some(Tok::Op("!=")) | Some(Tok::Op("<>")) => BinOp::Ne,
                Some(Tok::Op("<")) => BinOp::Lt,
                Some(Tok::Op("<=")) => BinOp::Le,
                Some(Tok::Op(">")) => BinOp::Gt,
                Some(Tok::Op(">=")) => BinOp::Ge,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.additive()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn additive(&mut self) -> Result<Expr, Error> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("+")) => BinOp::Add,
                Some(Tok::Op("-")) => BinOp::Sub,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.multiplicative()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, Error> {
        let mut left = self.in_set()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => BinOp::Mul,
                Some(Tok::Op("/")) => BinOp::Div,
                Some(Tok::Op("%")) => BinOp::Mod,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.in_set()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn in_set(&mut self) -> Result<Expr, Error> {
        let mut left = self.like()?;
        loop {
            let negated = self.keyword_at(0, "NOT") && self.keyword_at(1, "IN");
            if !negated && !self.keyword_at(0, "IN") {
                return Ok(left);
            }
            self.at += if negated { 2 } else { 1 };
            self.expect("(")?;
            let mut set = vec![self.expression()?];
            while self.op_at(0, ",") {
                self.at += 1;
                set.push(self.expression()?);
            }
            self.expect(")")?;
            left = Expr::In(Box::new(left), set, negated);
        }
    }

    fn like(&mut self) -> Result<Expr, Error> {
        let mut left = self.unary()?;
        loop {
            let negated = self.keyword_at(0, "NOT") && self.keyword_at(1, "LIKE");
            if !negated && !self.keyword_at(0, "LIKE") {
                return Ok(left);
            }
            self.at += if negated { 2 } else { 1 };
            let pattern = match self.next() {
                Some(Tok::Str(s)) => glob(&s),
                other => {
                    return Err(parse_error(format!(
                        "LIKE needs a string literal pattern, found {}",
                        describe(other.as_ref())
                    )));
                }
            };
            left = Expr::Like(Box::new(left), pattern, negated);
        }
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        self.nest()?;
        let out = if self.keyword_at(0, "NOT") {
            self.at += 1;
            Expr::Not(Box::new(self.unary()?))
        } else if self.op_at(0, "-") {
            self.at += 1;
            if let Some(Tok::Int(n)) = self.peek() {
                // a negative literal, so that -2147483648 is one
                let n = -*n;
                self.at += 1;
                Expr::Lit(Value::Int(n as i32))
            } else {
                Expr::Neg(Box::new(self.unary()?))
            }
        } else {
            self.primary()?
        };
        self.depth -= 1;
        Ok(out)
    }

    fn primary(&mut self) -> Result<Expr, Error> {
        match self.next() {
            Some(Tok::Op("(")) => {
                let e = self.expression()?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Op("+")) => match self.next() {
                Some(Tok::Int(n)) => int_literal(n),
                other => Err(parse_error(format!(
                    "expected a number after +, found {}",
                    describe(other.as_ref())
                ))),
            },
            Some(Tok::Int(n)) => int_literal(n),
            Some(Tok::Str(s)) => Ok(Expr::Lit(Value::Str(s))),
            Some(Tok::Word(w)) => {
                if w.eq_ignore_ascii_case("TRUE") {
                    return Ok(Expr::Lit(Value::Bool(true)));
                }
                if w.eq_ignore_ascii_case("FALSE") {
                    return Ok(Expr::Lit(Value::Bool(false)));
                }
                if w.eq_ignore_ascii_case("EXISTS") {
                    return match self.next() {
                        Some(Tok::Word(a)) if is_attribute(&a) => Ok(Expr::Exists(a)),
                        other => Err(parse_error(format!(
                            "EXISTS needs an attribute name, found {}",
                            describe(other.as_ref())
                        ))),
                    };
                }
                if self.op_at(0, "(") {
                    if !w.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
                        || !w.starts_with(|c: char| c.is_ascii_alphabetic())
                    {
                        return Err(parse_error(format!("{w:?} is not a function name")));
                    }
                    self.at += 1;
                    let mut args = Vec::new();
                    if !self.op_at(0, ")") {
                        args.push(self.expression()?);
                        while self.op_at(0, ",") {
                            self.at += 1;
                            args.push(self.expression()?);
                        }
                    }
                    self.expect(")")?;
                    return Ok(Expr::Call(w.to_ascii_uppercase(), args));
                }
                if is_keyword(&w) {
                    return Err(parse_error(format!("unexpected keyword {w}")));
                }
                if !is_attribute(&w) {
                    return Err(parse_error(format!(
                        "{w:?} is not an attribute name (lowercase letters and digits)"
                    )));
                }
                Ok(Expr::Attr(w))
            }
            other => Err(parse_error(format!(
                "expected a value, found {}",
                describe(other.as_ref())
            ))),
        }
    }
}

fn int_literal(n: i64) -> Result<Expr, Error> {
    i32::try_from(n)
        .map(|n| Expr::Lit(Value::Int(n)))
        .map_err(|_| parse_error(format!("integer {n} out of the 32-bit range")))
}

fn is_keyword(w: &str) -> bool {
    ["AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

fn is_attribute(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !is_keyword(w)
}

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "the end".into(),
        Some(Tok::Word(w)) => w.clone(),
        Some(Tok::Int(n)) => n.to_string(),
        Some(Tok::Str(s)) => format!("'{s}'"),
        Some(Tok::Op(o)) => (*o).to_string(),
    }
}

/// `%` any run, `_` one character, `\%` and `\_` themselves; any other character (a lone
/// backslash included) is itself.
fn glob(pattern: &str) -> Vec<Glob> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if matches!(chars.get(i + 1), Some('%') | Some('_')) => {
                out.push(Glob::Char(chars[i + 1]));
                i += 2;
                continue;
            }
            '%' => out.push(Glob::Any),
            '_' => out.push(Glob::One),
            c => out.push(Glob::Char(c)),
        }
        i += 1;
    }
    out
}

/// Whether `text` matches the pattern: linear backtracking on the last `%`.
fn like(text: &str, pattern: &[Glob]) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match pattern.get(pi) {
            Some(Glob::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Glob::One) => {
                ti += 1;
                pi += 1;
            }
            Some(Glob::Char(c)) if *c == t[ti] => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi.min(pattern.len())..]
        .iter()
        .all(|g| *g == Glob::Any)
}

/// A value and, if something failed, the first error.
type Out = (Value, Option<Error>);

/// Implicit casts, as operators apply them: integer to boolean is refused (only `BOOL()`
/// converts it).
fn cast(v: Value, to: Type) -> Out {
    cast_as(v, to, false)
}

fn cast_as(v: Value, to: Type, explicit: bool) -> Out {
    let fail = |m: String| (to.zero(), Some(error(ErrorKind::Cast, m)));
    match (v, to) {
        (v, t) if v.kind() == t => (v, None),
        (Value::Int(i), Type::Str) => (Value::Str(i.to_string()), None),
        (Value::Bool(b), Type::Str) => (Value::Str(b.to_string()), None),
        (Value::Bool(b), Type::Int) => (Value::Int(i32::from(b)), None),
        (Value::Int(i), Type::Bool) if explicit => (Value::Bool(i != 0), None),
        (Value::Int(i), Type::Bool) => fail(format!("cannot use the integer {i} as a boolean")),
        (Value::Str(s), Type::Int) => match parse_int(&s) {
            Some(i) => (Value::Int(i), None),
            None => fail(format!("{s:?} is not a 32-bit integer")),
        },
        (Value::Str(s), Type::Bool) => match s.to_ascii_lowercase().as_str() {
            "true" => (Value::Bool(true), None),
            "false" => (Value::Bool(false), None),
            _ => fail(format!("{s:?} is not a boolean")),
        },
        (v, t) => fail(format!("cannot cast {v} to {t:?}")),
    }
}

fn parse_int(s: &str) -> Option<i32> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok()
}

fn first(a: Option<Error>, b: Option<Error>) -> Option<Error> {
    a.or(b)
}

fn as_bool(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

fn as_int(v: &Value) -> i32 {
    match v {
        Value::Int(i) => *i,
        _ => 0,
    }
}

fn as_str(v: Value) -> String {
    match v {
        Value::Str(s) => s,
        other => other.to_string(),
    }
}

fn math(m: &str) -> Out {
    (Value::Int(0), Some(error(ErrorKind::Math, m)))
}

impl BinOp {
    fn result(self) -> Type {
        match self {
            BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::Add | BinOp::Sub => Type::Int,
            _ => Type::Bool,
        }
    }
}

fn eval(e: &Expr, ev: &dyn Event) -> Out {
    match e {
        Expr::Lit(v) => (v.clone(), None),
        Expr::Attr(name) => match ev.attribute(name) {
            Some(v) => (v, None),
            None => (
                Value::Bool(false),
                Some(error(
                    ErrorKind::MissingAttribute,
                    format!("no attribute {name}"),
                )),
            ),
        },
        Expr::Exists(name) => (Value::Bool(ev.attribute(name).is_some()), None),
        Expr::Not(x) => {
            let (v, err) = eval(x, ev);
            if err.is_some() {
                return (Value::Bool(false), err);
            }
            let (b, err) = cast(v, Type::Bool);
            (Value::Bool(!as_bool(&b)), err)
        }
        Expr::Neg(x) => {
            let (v, err) = eval(x, ev);
            if err.is_some() {
                return (Value::Int(0), err);
            }
            let (i, err) = cast(v, Type::Int);
            match as_int(&i).checked_neg() {
                Some(n) => (Value::Int(n), err),
                None => math("integer overflow in negation"),
            }
        }
        Expr::Like(x, pattern, negated) => {
            let (v, err) = eval(x, ev);
            if err.is_some() {
                return (Value::Bool(false), err);
            }
            (Value::Bool(like(&as_str(v), pattern) != *negated), None)
        }
        Expr::In(x, set, negated) => {
            let (v, err) = eval(x, ev);
            if err.is_some() {
                return (Value::Bool(false), err);
            }
            let target = v.kind();
            let mut found = false;
            let mut cast_error = None;
            for item in set {
                let (y, err) = eval(item, ev);
                if err.is_some() {
                    return (Value::Bool(false), err);
                }
                let (y, err) = cast(y, target);
                cast_error = first(cast_error, err);
                found |= y == v;
            }
            (Value::Bool(found != *negated), cast_error)
        }
        Expr::Bin(op, l, r) => binary(*op, l, r, ev),
        Expr::Call(name, args) => call(name, args, ev),
    }
}

fn binary(op: BinOp, l: &Expr, r: &Expr, ev: &dyn Event) -> Out {
    let zero = op.result().zero();
    let (lv, err) = eval(l, ev);
    if err.is_some() {
        return (zero, err);
    }
    if matches!(op, BinOp::And | BinOp::Or) {
        let (lb, lerr) = cast(lv, Type::Bool);
        let lb = as_bool(&lb);
        // short circuit: the right side is not evaluated
        if op == BinOp::And && !lb {
            return (Value::Bool(false), lerr);
        }
        if op == BinOp::Or && lb {
            return (Value::Bool(true), lerr);
        }
        let (rv, err) = eval(r, ev);
        if err.is_some() {
            return (zero, err);
        }
        let (rb, rerr) = cast(rv, Type::Bool);
        return (Value::Bool(as_bool(&rb)), first(lerr, rerr));
    }
    let (rv, err) = eval(r, ev);
    if err.is_some() {
        return (zero, err);
    }
    match op {
        BinOp::Xor => {
            let (a, e1) = cast(lv, Type::Bool);
            let (b, e2) = cast(rv, Type::Bool);
            (Value::Bool(as_bool(&a) != as_bool(&b)), first(e1, e2))
        }
        BinOp::Eq | BinOp::Ne => {
            // ambiguous: the right operand's type decides
            let (a, e) = cast(lv, rv.kind());
            let equal = a == rv;
            (Value::Bool(equal == (op == BinOp::Eq)), e)
        }
        _ => {
            let (a, e1) = cast(lv, Type::Int);
            let (b, e2) = cast(rv, Type::Int);
            let (a, b, err) = (as_int(&a), as_int(&b), first(e1, e2));
            let out = match op {
                BinOp::Lt => Value::Bool(a < b),
                BinOp::Le => Value::Bool(a <= b),
                BinOp::Gt => Value::Bool(a > b),
                BinOp::Ge => Value::Bool(a >= b),
                BinOp::Add => match a.checked_add(b) {
                    Some(v) => Value::Int(v),
                    None => return math("integer overflow in +"),
                },
                BinOp::Sub => match a.checked_sub(b) {
                    Some(v) => Value::Int(v),
                    None => return math("integer overflow in -"),
                },
                BinOp::Mul => match a.checked_mul(b) {
                    Some(v) => Value::Int(v),
                    None => return math("integer overflow in *"),
                },
                BinOp::Div | BinOp::Mod if b == 0 => return math("division by zero"),
                BinOp::Div => match a.checked_div(b) {
                    Some(v) => Value::Int(v),
                    None => return math("integer overflow in /"),
                },
                BinOp::Mod => Value::Int(a.checked_rem(b).unwrap_or(0)),
                _ => Value::Bool(false),
            };
            (out, err)
        }
    }
}

/// A built-in function: its parameter types (the last repeated when variadic) and result.
struct Signature {
    params: &'static [Type],
    variadic: bool,
    result: Type,
}

fn signature(name: &str, arity: usize) -> Option<Signature> {
    use Type::*;
    let fixed = |params: &'static [Type], result| {
        (params.len() == arity).then_some(Signature {
            params,
            variadic: false,
            result,
        })
    };
    match name {
        "LENGTH" => fixed(&[Str], Int),
        "CONCAT" => Some(Signature {
            params: &[Str],
            variadic: true,
            result: Str,
        }),
        "CONCAT_WS" if arity >= 1 => Some(Signature {
            params: &[Str, Str],
            variadic: true,
            result: Str,
        }),
        "LOWER" | "UPPER" | "TRIM" => fixed(&[Str], Str),
        "LEFT" | "RIGHT" => fixed(&[Str, Int], Str),
        "SUBSTRING" if arity == 2 => fixed(&[Str, Int], Str),
        "SUBSTRING" => fixed(&[Str, Int, Int], Str),
        "ABS" => fixed(&[Int], Int),
        "INT" => fixed(&[Int], Int),
        "BOOL" => fixed(&[Bool], Bool),
        "STRING" => fixed(&[Str], Str),
        "IS_INT" | "IS_BOOL" | "IS_STRING" => fixed(&[Str], Bool),
        _ => None,
    }
}

fn call(name: &str, args: &[Expr], ev: &dyn Event) -> Out {
    let Some(sig) = signature(name, args.len()) else {
        return (
            Value::Bool(false),
            Some(error(
                ErrorKind::MissingFunction,
                format!("no function {name} with {} arguments", args.len()),
            )),
        );
    };
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        let (v, err) = eval(a, ev);
        if err.is_some() {
            return (sig.result.zero(), err);
        }
        values.push(v);
    }
    let explicit = matches!(name, "INT" | "BOOL" | "STRING");
    // IS_* ask whether a cast would work: they take the value as it is
    if let Some(t) = match name {
        "IS_INT" => Some(Type::Int),
        "IS_BOOL" => Some(Type::Bool),
        "IS_STRING" => Some(Type::Str),
        _ => None,
    } {
        let v = values.pop().unwrap_or(Value::Bool(false));
        let ok = t == Type::Str || cast_as(v, t, false).1.is_none();
        return (Value::Bool(ok), None);
    }
    let mut cast_error = None;
    let mut cast_args = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let t = if sig.variadic {
            sig.params[i.min(sig.params.len() - 1)]
        } else {
            sig.params[i]
        };
        let (v, err) = cast_as(v, t, explicit);
        cast_error = first(cast_error, err);
        cast_args.push(v);
    }
    let (v, err) = builtin(name, cast_args);
    (v, first(cast_error, err))
}

fn fn_error(m: impl Into<String>) -> Option<Error> {
    Some(error(ErrorKind::FunctionEvaluation, m))
}

fn builtin(name: &str, args: Vec<Value>) -> Out {
    let text = |i: usize| match args.get(i) {
        Some(Value::Str(s)) => s.as_str(),
        _ => "",
    };
    let int = |i: usize| args.get(i).map_or(0, as_int);
    match name {
        "LENGTH" => {
            let n = text(0).chars().count();
            (Value::Int(i32::try_from(n).unwrap_or(i32::MAX)), None)
        }
        "CONCAT" => (Value::Str((0..args.len()).map(text).collect()), None),
        "CONCAT_WS" => {
            let parts: Vec<&str> = (1..args.len()).map(text).collect();
            (Value::Str(parts.join(text(0))), None)
        }
        "LOWER" => (Value::Str(text(0).to_lowercase()), None),
        "UPPER" => (Value::Str(text(0).to_uppercase()), None),
        "TRIM" => (Value::Str(text(0).trim().into()), None),
        "LEFT" | "RIGHT" => {
            let s = text(0);
            let n = int(1);
            if n < 0 {
                return (
                    Value::Str(s.into()),
                    fn_error(format!("{name} of a negative length {n}")),
                );
            }
            let len = s.chars().count();
            let n = (n as usize).min(len);
            let out: String = if name == "LEFT" {
                s.chars().take(n).collect()
            } else {
                s.chars().skip(len - n).collect()
            };
            (Value::Str(out), None)
        }
        "SUBSTRING" => {
            let s: Vec<char> = text(0).chars().collect();
            let len = s.len() as i64;
            let pos = i64::from(int(1));
            let take = if args.len() == 3 {
                Some(i64::from(int(2)))
            } else {
                None
            };
            if pos > len || pos < -len {
                return (
                    Value::Str(String::new()),
                    fn_error(format!(
                        "SUBSTRING position {pos} outside a string of {len}"
                    )),
                );
            }
            if take.is_some_and(|t| t < 0) {
                return (
                    Value::Str(String::new()),
                    fn_error("SUBSTRING of a negative length"),
                );
            }
            if pos == 0 {
                return (Value::Str(String::new()), None);
            }
            let start = if pos > 0 { pos - 1 } else { len + pos } as usize;
            let end = take.map_or(s.len(), |t| (start + t as usize).min(s.len()));
            (Value::Str(s[start..end].iter().collect()), None)
        }
        "ABS" => {
            let i = int(0);
            match i.checked_abs() {
                Some(a) => (Value::Int(a), None),
                None => (
                    Value::Int(i32::MAX),
                    Some(error(ErrorKind::Math, "ABS of the most negative integer")),
                ),
            }
        }
        // the casts happened on the way in
        "INT" | "BOOL" | "STRING" => (args.into_iter().next().unwrap_or(Value::Bool(false)), None),
        _ => (
            Value::Bool(false),
            Some(error(
                ErrorKind::MissingFunction,
                format!("no function {name}"),
            )),
        ),
    }
}

impl Expression {
    /// Parses an expression; the error says where it went wrong.
    pub fn parse(raw: &str) -> Result<Expression, Error> {
        if raw.len() > EXPRESSION_BYTES_MAX {
            return Err(parse_error(format!(
                "longer than {EXPRESSION_BYTES_MAX} bytes"
            )));
        }
        let mut p = Parser {
            toks: lex(raw)?,
            at: 0,
            depth: 0,
        };
        let root = p.expression()?;
        if let Some(t) = p.peek() {
            return Err(parse_error(format!(
                "unexpected {} after the expression",
                describe(Some(t))
            )));
        }
        Ok(Expression { root })
    }

    /// The expression's value over `event`, and the first error, if any.
    pub fn evaluate(&self, event: &dyn Event) -> (Value, Option<Error>) {
        eval(&self.root, event)
    }

    /// As a filter: `true` without an error passes.
    pub fn matches(&self, event: &dyn Event) -> bool {
        matches!(self.evaluate(event), (Value::Bool(true), None))
    }
}

/// Parses and evaluates in one step, as the TCK does: a parse error is `false` with it.
pub fn evaluate(raw: &str, event: &dyn Event) -> (Value, Option<Error>) {
    match Expression::parse(raw) {
        Ok(e) => e.evaluate(event),
        Err(e) => (Value::Bool(false), Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn event() -> BTreeMap<String, Value> {
        [
            ("id", Value::Str("1".into())),
            ("source", Value::Str("/s".into())),
            ("type", Value::Str("com.example.created".into())),
            ("priority", Value::Str("7".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn precedence_and_right_associative_logic() {
        let ev = event();
        assert_eq!(evaluate("1 + 2 * 3", &ev).0, Value::Int(7));
        assert_eq!(evaluate("-2147483648", &ev).0, Value::Int(i32::MIN));
        assert_eq!(
            evaluate("2147483648", &ev).1.map(|e| e.kind),
            Some(ErrorKind::Parse)
        );
        assert_eq!(evaluate("NOT TRUE = FALSE", &ev).0, Value::Bool(true));
        assert!(
            Expression::parse("type LIKE 'com.%' AND INT(priority) > 3")
                .expect("parses")
                .matches(&ev)
        );
        assert!(
            !Expression::parse("nope = 'x' OR TRUE")
                .expect("parses")
                .matches(&ev)
        );
    }

    #[test]
    fn bad_input_is_a_parse_error_never_a_panic() {
        for bad in [
            "", "(", "a LIKE 1", "'open", "EXISTS 1", "1 +", "a IN ()", "Foo", "a ! b", "f1(2)",
            "1 2",
        ] {
            let (v, e) = evaluate(bad, &event());
            assert_eq!(v, Value::Bool(false), "{bad}");
            assert_eq!(e.map(|e| e.kind), Some(ErrorKind::Parse), "{bad}");
        }
        let deep = "(".repeat(500) + "1" + &")".repeat(500);
        assert_eq!(
            evaluate(&deep, &event()).1.map(|e| e.kind),
            Some(ErrorKind::Parse)
        );
        assert_eq!(
            evaluate(&"NOT ".repeat(500), &event()).1.map(|e| e.kind),
            Some(ErrorKind::Parse)
        );
    }

    #[test]
    fn like_backtracks_linearly() {
        let p = glob("%a%b%c%d%e%f%g");
        assert!(!like(&"a".repeat(5000), &p));
        assert!(like("xxaxbxcxdxexfxg", &p));
        assert!(like("", &glob("%")));
        assert!(!like("", &glob("_")));
    }
}
