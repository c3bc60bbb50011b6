//! A subset of OTTL, the OpenTelemetry Transformation Language, for `ottl_condition`
//! policies: boolean conditions on a span or a span event, evaluated while scanning.
//!
//! Supported (anything else is refused when the config is loaded, naming the
//! condition and what was expected):
//! - paths, span context: `name`, `kind`, `status.code`, `attributes["key"]`,
//!   `resource.attributes["key"]`; span-event context: `name`, `attributes["key"]`;
//! - literals: `"strings"` (with `\"` and `\\` escapes), integers, floats, `true`,
//!   `false`, `nil`, and the enums `STATUS_CODE_UNSET|OK|ERROR`,
//!   `SPAN_KIND_UNSPECIFIED|INTERNAL|SERVER|CLIENT|PRODUCER|CONSUMER`;
//! - comparisons `==`, `!=`, `<`, `<=`, `>`, `>=`; `and`, `or`, `not`, parentheses;
//! - the converter `IsMatch(target, "regex")` (unanchored, as OTTL's).
//!
//! Semantics follow OTTL's: a missing attribute is `nil`; `==` between different
//! types is false (an integer and a float compare as numbers) and `!=` its negation;
//! ordering between strings is bytewise, between other types of different kinds
//! false. Evaluation cannot fail, so `error_mode` has nothing to act on.

use regex::Regex;

/// Which record a condition is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OttlContext {
    /// The span (OTTL's `span` context).
    Span,
    /// Each event of the span (OTTL's `spanevent` context).
    SpanEvent,
}

/// Why a condition was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} at character {at}")]
pub struct OttlError {
    /// Character offset in the condition.
    pub at: usize,
    /// What was wrong, and what was expected.
    pub what: String,
}

/// A parsed condition.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    expr: Expr,
}

#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(Operand, Op, Operand),
    IsMatch(Operand, Box<Regex>),
    Const(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
enum Operand {
    Path(Path),
    Lit(Lit),
}

/// A field of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Path {
    Name,
    Kind,
    StatusCode,
    Attribute(Box<[u8]>),
    ResourceAttribute(Box<[u8]>),
}

#[derive(Debug, Clone)]
enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
}

/// A value a path or literal evaluates to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Str(&'a [u8]),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
}

/// What a condition reads from the record it is evaluated on.
pub(crate) trait Record {
    /// The value at `path` (`Nil` if absent).
    fn get(&self, path: &Path) -> Value<'_>;
}

impl Condition {
    /// Parses `source` for `context`.
    ///
    /// # Errors
    /// [`OttlError`] with the position and what was expected.
    pub fn parse(source: &str, context: OttlContext) -> Result<Condition, OttlError> {
        let tokens = tokenize(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            context,
            end: source.len(),
            depth: 0,
        };
        let expr = p.or()?;
        if let Some((at, t)) = p.tokens.get(p.pos) {
            return Err(OttlError {
                at: *at,
                what: format!("unexpected {t:?}; expected `and`, `or` or the end"),
            });
        }
        Ok(Condition {
            source: source.to_string(),
            expr,
        })
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every path it reads.
    pub(crate) fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.expr.paths(&mut out);
        out
    }

    /// Whether `record` satisfies it.
    pub(crate) fn eval(&self, record: &impl Record) -> bool {
        self.expr.eval(record)
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expr {
    fn paths<'a>(&'a self, out: &mut Vec<&'a Path>) {
        let mut operand = |o: &'a Operand| {
            if let Operand::Path(p) = o {
                out.push(p);
            }
        };
        match self {
            Expr::Or(v) | Expr::And(v) => v.iter().for_each(|e| e.paths(out)),
            Expr::Not(e) => e.paths(out),
            Expr::Cmp(a, _, b) => {
                operand(a);
                operand(b);
            }
            Expr::IsMatch(a, _) => operand(a),
            Expr::Const(_) => {}
        }
    }

    fn eval(&self, r: &impl Record) -> bool {
        match self {
            Expr::Or(v) => v.iter().any(|e| e.eval(r)),
            Expr::And(v) => v.iter().all(|e| e.eval(r)),
            Expr::Not(e) => !e.eval(r),
            Expr::Const(b) => *b,
            Expr::IsMatch(target, re) => match value(target, r) {
                Value::Str(s) => std::str::from_utf8(s).is_ok_and(|s| re.is_match(s)),
                _ => false,
            },
            Expr::Cmp(a, op, b) => compare(value(a, r), *op, value(b, r)),
        }
    }
}

fn value<'a>(o: &'a Operand, r: &'a impl Record) -> Value<'a> {
    match o {
        Operand::Path(p) => r.get(p),
        Operand::Lit(Lit::Str(s)) => Value::Str(s.as_bytes()),
        Operand::Lit(Lit::Int(i)) => Value::Int(*i),
        Operand::Lit(Lit::Float(f)) => Value::Float(*f),
        Operand::Lit(Lit::Bool(b)) => Value::Bool(*b),
        Operand::Lit(Lit::Nil) => Value::Nil,
    }
}

fn compare(a: Value<'_>, op: Op, b: Value<'_>) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(&y)),
        (Value::Int(x), Value::Float(y)) => (x as f64).partial_cmp(&y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(y as f64)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(&y),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(&y)),
        (Value::Nil, Value::Nil) => Some(Ordering::Equal),
        _ => None,
    };
    match op {
        Op::Eq => ord == Some(Ordering::Equal),
        Op::Ne => ord != Some(Ordering::Equal),
        // Booleans and nil have no order in OTTL.
        _ if matches!(a, Value::Bool(_) | Value::Nil) => false,
        Op::Lt => ord == Some(Ordering::Less),
        Op::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => ord == Some(Ordering::Greater),
        Op::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<(usize, Token)>, OttlError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, what: &str| OttlError {
        at,
        what: what.to_string(),
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => out.push((start, Token::LParen)),
            b')' => out.push((start, Token::RParen)),
            b'[' => out.push((start, Token::LBracket)),
            b']' => out.push((start, Token::RBracket)),
            b',' => out.push((start, Token::Comma)),
            b'"' => {
                let mut text = Vec::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated string")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            match b.get(i + 1) {
                                Some(&e @ (b'"' | b'\\')) => text.push(e),
                                Some(b'n') => text.push(b'\n'),
                                Some(b't') => text.push(b'\t'),
                                _ => return Err(err(i, "unknown escape; expected \\\" or \\\\")),
                            }
                            i += 2;
                        }
                        Some(&ch) => {
                            text.push(ch);
                            i += 1;
                        }
                    }
                }
                let text = String::from_utf8(text).map_err(|_| err(start, "invalid UTF-8"))?;
                out.push((start, Token::Str(text)));
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = b.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'<', true) => Op::Le,
                    (b'>', true) => Op::Ge,
                    (b'<', false) => Op::Lt,
                    (b'>', false) => Op::Gt,
                    _ => return Err(err(start, "expected ==, !=, <, <=, > or >=")),
                };
                out.push((start, Token::Op(op)));
                i += usize::from(two);
            }
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'e') {
                    i += 1;
                }
                let text = &s[start..i];
                let token = match text.parse::<i64>() {
                    Ok(n) => Token::Int(n),
                    Err(_) => Token::Float(
                        text.parse::<f64>()
                            .map_err(|_| err(start, "invalid number"))?,
                    ),
                };
                out.push((start, token));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                out.push((start, Token::Ident(s[start..i].to_string())));
                continue;
            }
            _ => return Err(err(start, "unexpected character")),
        }
        i += 1;
    }
    Ok(out)
}

/// Deepest nesting of parentheses and `not`s accepted: the parser and evaluator
/// recurse once per level, and a condition of thousands of levels would overflow the
/// stack of the thread that loads (or reloads) the config.
pub const MAX_NESTING: usize = 64;

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    context: OttlContext,
    end: usize,
    /// Parentheses and `not`s open at this point.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(a, _)| *a)
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, OttlError> {
        Err(OttlError {
            at: self.at(),
            what: what.into(),
        })
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(i)) if i == k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: Token, what: &str) -> Result<(), OttlError> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected {what}"))
        }
    }

    fn or(&mut self) -> Result<Expr, OttlError> {
        let mut v = vec![self.and()?];
        while self.keyword("or") {
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, OttlError> {
        let mut v = vec![self.not()?];
        while self.keyword("and") {
            v.push(self.not()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::And(v)
        })
    }

    fn not(&mut self) -> Result<Expr, OttlError> {
        if self.keyword("not") {
            self.enter()?;
            let e = Expr::Not(Box::new(self.not()?));
            self.depth -= 1;
            return Ok(e);
        }
        self.primary()
    }

    /// One level deeper, refused past [`MAX_NESTING`].
    fn enter(&mut self) -> Result<(), OttlError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.fail(format!(
                "at most {MAX_NESTING} nested parentheses and `not`s"
            ));
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Expr, OttlError> {
        if self.peek() == Some(&Token::LParen) {
            self.pos += 1;
            self.enter()?;
            let e = self.or()?;
            self.expect(Token::RParen, "`)`")?;
            self.depth -= 1;
            return Ok(e);
        }
        if matches!(self.peek(), Some(Token::Ident(i)) if i == "IsMatch") {
            self.pos += 1;
            self.expect(Token::LParen, "`(` after IsMatch")?;
            let target = self.operand()?;
            self.expect(Token::Comma, "`,` and a pattern")?;
            let at = self.at();
            let Some(Token::Str(pattern)) = self.peek().cloned() else {
                return self.fail("a pattern string");
            };
            self.pos += 1;
            self.expect(Token::RParen, "`)`")?;
            let re = Regex::new(&pattern).map_err(|e| OttlError {
                at,
                what: format!("invalid regular expression: {e}"),
            })?;
            return Ok(Expr::IsMatch(target, Box::new(re)));
        }
        let left = self.operand()?;
        match self.peek() {
            Some(Token::Op(op)) => {
                let op = *op;
                self.pos += 1;
                let right = self.operand()?;
                Ok(Expr::Cmp(left, op, right))
            }
            _ => match left {
                Operand::Lit(Lit::Bool(b)) => Ok(Expr::Const(b)),
                _ => self.fail("a comparison operator (==, !=, <, <=, >, >=)"),
            },
        }
    }

    fn operand(&mut self) -> Result<Operand, OttlError> {
        let at = self.at();
        let Some(t) = self.peek().cloned() else {
            return self.fail("a path or a value");
        };
        self.pos += 1;
        Ok(match t {
            Token::Str(s) => Operand::Lit(Lit::Str(s)),
            Token::Int(i) => Operand::Lit(Lit::Int(i)),
            Token::Float(f) => Operand::Lit(Lit::Float(f)),
            Token::Ident(id) => match id.as_str() {
                "true" => Operand::Lit(Lit::Bool(true)),
                "false" => Operand::Lit(Lit::Bool(false)),
                "nil" => Operand::Lit(Lit::Nil),
                _ => match enum_value(&id) {
                    Some(v) => Operand::Lit(Lit::Int(v)),
                    None => Operand::Path(self.path(&id, at)?),
                },
            },
            other => {
                self.pos -= 1;
                return self.fail(format!("a path or a value, not {other:?}"));
            }
        })
    }

    fn path(&mut self, id: &str, at: usize) -> Result<Path, OttlError> {
        let keyed = |p: &mut Parser| -> Result<Box<[u8]>, OttlError> {
            p.expect(Token::LBracket, "`[\"key\"]`")?;
            let Some(Token::Str(k)) = p.peek().cloned() else {
                return p.fail("a key string");
            };
            p.pos += 1;
            p.expect(Token::RBracket, "`]`")?;
            Ok(k.into_bytes().into_boxed_slice())
        };
        let span = self.context == OttlContext::Span;
        Ok(match id {
            "name" => Path::Name,
            "kind" if span => Path::Kind,
            "status.code" if span => Path::StatusCode,
            "attributes" => Path::Attribute(keyed(self)?),
            "resource.attributes" if span => Path::ResourceAttribute(keyed(self)?),
            _ => {
                let supported = if span {
                    "name, kind, status.code, attributes[\"k\"], resource.attributes[\"k\"]"
                } else {
                    "name, attributes[\"k\"]"
                };
                return Err(OttlError {
                    at,
                    what: format!("unsupported path `{id}`; supported here: {supported}"),
                });
            }
        })
    }
}

fn enum_value(id: &str) -> Option<i64> {
    Some(match id {
        "STATUS_CODE_UNSET" | "SPAN_KIND_UNSPECIFIED" => 0,
        "STATUS_CODE_OK" | "SPAN_KIND_INTERNAL" => 1,
        "STATUS_CODE_ERROR" | "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        name: &'static str,
        kind: i64,
        attrs: Vec<(&'static str, Value<'static>)>,
    }

    impl Record for Fake {
        fn get(&self, path: &Path) -> Value<'_> {
            match path {
                Path::Name => Value::Str(self.name.as_bytes()),
                Path::Kind => Value::Int(self.kind),
                Path::StatusCode => Value::Int(2),
                Path::Attribute(k) => self
                    .attrs
                    .iter()
                    .find(|(n, _)| n.as_bytes() == &k[..])
                    .map_or(Value::Nil, |(_, v)| *v),
                Path::ResourceAttribute(_) => Value::Nil,
            }
        }
    }

    fn span() -> Fake {
        Fake {
            name: "GET /api/pay",
            kind: 2,
            attrs: vec![
                ("http.status_code", Value::Int(503)),
                ("http.route", Value::Str(b"/api/pay")),
                ("retry", Value::Bool(true)),
                ("ratio", Value::Float(0.5)),
            ],
        }
    }

    fn eval(src: &str) -> bool {
        Condition::parse(src, OttlContext::Span)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval(&span())
    }

    #[test]
    fn comparisons_follow_ottl() {
        assert!(eval(r#"attributes["http.route"] == "/api/pay""#));
        assert!(eval(r#"attributes["http.route"] != "/api/cart""#));
        assert!(eval(r#"attributes["missing"] == nil"#));
        assert!(eval(r#"attributes["missing"] != "x""#));
        assert!(!eval(r#"attributes["missing"] == "x""#));
        assert!(eval(r#"attributes["http.status_code"] >= 500"#));
        assert!(!eval(r#"attributes["http.status_code"] < 500"#));
        assert!(eval(r#"attributes["http.status_code"] > 500.5"#));
        assert!(eval(r#"attributes["ratio"] == 0.5"#));
        assert!(
            !eval(r#"attributes["http.status_code"] == "503""#),
            "types differ"
        );
        assert!(eval(r#"attributes["retry"] == true"#));
        assert!(
            !eval(r#"attributes["retry"] > false"#),
            "booleans have no order"
        );
        assert!(eval(
            "kind == SPAN_KIND_SERVER and status.code == STATUS_CODE_ERROR"
        ));
        assert!(eval(r#"name == "GET /api/pay""#));
    }

    #[test]
    fn logic_and_ismatch() {
        assert!(eval(
            r#"IsMatch(name, "^GET ") and not (kind == SPAN_KIND_CLIENT)"#
        ));
        assert!(eval(
            r#"kind == 3 or IsMatch(attributes["http.route"], "pay")"#
        ));
        assert!(
            !eval(r#"IsMatch(attributes["http.status_code"], "5")"#),
            "not a string"
        );
        assert!(eval("true"));
        assert!(!eval("not true or false"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let ok = format!("{}true{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(Condition::parse(&ok, OttlContext::Span).is_ok());
        for deep in [
            format!("{}true{}", "(".repeat(2500), ")".repeat(2500)),
            format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!("{}true", "not ".repeat(5000)),
        ] {
            let e = Condition::parse(&deep, OttlContext::Span).expect_err("too deep");
            assert!(e.to_string().contains("nested"), "{e}");
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = Condition::parse(r#"attributes["a"] =="#, OttlContext::Span).expect_err("cut");
        assert!(e.what.contains("a path or a value"), "{e}");
        let e = Condition::parse("duration > 5", OttlContext::Span).expect_err("path");
        assert_eq!(e.at, 0);
        assert!(e.what.contains("unsupported path `duration`"), "{e}");
        let e = Condition::parse("kind == 2", OttlContext::SpanEvent).expect_err("ctx");
        assert!(e.what.contains("name, attributes"), "{e}");
        let e = Condition::parse(r#"IsMatch(name, "(")"#, OttlContext::Span).expect_err("re");
        assert!(e.what.contains("regular expression"), "{e}");
        let e = Condition::parse(r#"name == "x" name"#, OttlContext::Span).expect_err("tail");
        assert!(e.what.contains("unexpected"), "{e}");
    }
}
