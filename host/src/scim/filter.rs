//! SCIM filters (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2): parsing, printing, and
//! evaluation against a resource's JSON form.
//!
//! Hand-written recursive descent rather than the `scim-filter` crate: that crate only
//! filters serde collections, while Gatehouse must also read a filter's shape to choose an
//! index (`userName eq "…"` is one key lookup, not a scan), parse PATCH paths
//! (`emails[type eq "work"].value`), and report *why* a filter is invalid. The grammar is
//! small; one parser serves all three. Input is bounded (length and nesting depth), so no
//! input can make it recurse without limit or panic.

use serde_json::Value;
use std::fmt;

/// The longest filter or path accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// The deepest nesting of parentheses, `not` and value filters accepted.
pub const MAX_DEPTH: usize = 32;

/// The core User schema URN.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The core Group schema URN.
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// The enterprise User extension URN.
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Why a filter or path is invalid (the `detail` of a SCIM `invalidFilter`/`invalidPath`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// `[urn:]name[.sub]`, names as written (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub urn: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A comparison value: `true`, `false`, `null`, a number or a string.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Bool(bool),
    Null,
    /// Kept as written (JSON number syntax) so printing is exact.
    Number(serde_json::Number),
    Str(String),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare(AttrPath, CompareOp, CompValue),
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`: some element of multi-valued `attr` matches `filter`.
    ValuePath(AttrPath, Box<Filter>),
}

/// A PATCH path: `attrPath`, or `attrPath[valFilter]` optionally followed by `.subAttr`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after a value filter (`emails[type eq "work"].value`).
    pub sub: Option<String>,
}

impl CompareOp {
    fn parse(word: &str) -> Option<CompareOp> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

// ------------------------------------------------------------------ lexing

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// A string literal, unescaped.
    Str(String),
    /// Any other run of characters: names, operators, keywords, numbers.
    Word(String),
    /// `.sub` right after `]` (PATCH paths only).
    Dot,
}

fn lex(input: &str) -> Result<Vec<Token>, ParseError> {
    if input.len() > MAX_LEN {
        return Err(ParseError(format!("is longer than {MAX_LEN} characters")));
    }
    let mut tokens = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(Token::LParen);
                i += 1
            }
            b')' => {
                tokens.push(Token::RParen);
                i += 1
            }
            b'[' => {
                tokens.push(Token::LBracket);
                i += 1
            }
            b']' => {
                tokens.push(Token::RBracket);
                i += 1
            }
            b'.' if tokens.last() == Some(&Token::RBracket) => {
                tokens.push(Token::Dot);
                i += 1
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(ParseError(format!(
                                "has an unterminated string starting at character {}",
                                start + 1
                            )))
                        }
                        Some(b'\\') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                let literal = input.get(start..i).unwrap_or_default();
                let text: String = serde_json::from_str(literal)
                    .map_err(|_| ParseError(format!("has an invalid string literal {literal}")))?;
                tokens.push(Token::Str(text));
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b'[' | b']' | b'"'
                    )
                {
                    i += 1;
                }
                tokens.push(Token::Word(input[start..i].to_owned()));
            }
        }
    }
    Ok(tokens)
}

// ------------------------------------------------------------------ parsing

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '$' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses `[urn:]name[.sub]`.
pub fn parse_attr_path(text: &str) -> Result<AttrPath, ParseError> {
    let (urn, rest) = if text
        .get(..4)
        .is_some_and(|head| head.eq_ignore_ascii_case("urn:"))
    {
        match text.rfind(':') {
            Some(i) if i + 1 < text.len() => (Some(text[..i].to_owned()), &text[i + 1..]),
            _ => {
                return Err(ParseError(format!(
                    "attribute {text:?} names no attribute after its schema URN"
                )))
            }
        }
    } else {
        (None, text)
    };
    let (name, sub) = match rest.split_once('.') {
        Some((name, sub)) => (name, Some(sub)),
        None => (rest, None),
    };
    if !is_name(name) || sub.is_some_and(|s| !is_name(s)) {
        return Err(ParseError(format!(
            "{text:?} is not an attribute path: use name, name.subAttribute or a schema URN followed by :name"
        )));
    }
    Ok(AttrPath {
        urn,
        name: name.to_owned(),
        sub: sub.map(str::to_owned),
    })
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError(format!("nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// `or` binds loosest.
    fn or(&mut self) -> Result<Filter, ParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ParseError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ParseError> {
        if self.keyword("not") && self.tokens.get(self.pos + 1) == Some(&Token::LParen) {
            self.pos += 1;
            self.deeper()?;
            let inner = self.group()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.deeper()?;
            let inner = self.group()?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.attr_expression()
    }

    /// `( filter )`
    fn group(&mut self) -> Result<Filter, ParseError> {
        self.next(); // (
        let inner = self.or()?;
        match self.next() {
            Some(Token::RParen) => Ok(inner),
            other => Err(ParseError(format!(
                "expected \")\" but found {}",
                describe(other.as_ref())
            ))),
        }
    }

    fn attr_expression(&mut self) -> Result<Filter, ParseError> {
        let path = match self.next() {
            Some(Token::Word(word)) => parse_attr_path(&word)?,
            other => {
                return Err(ParseError(format!(
                    "expected an attribute name but found {}",
                    describe(other.as_ref())
                )))
            }
        };
        if self.peek() == Some(&Token::LBracket) {
            if path.sub.is_some() {
                return Err(ParseError(format!(
                    "a value filter follows a sub-attribute ({}.{}[…]): filter the attribute itself",
                    path.name,
                    path.sub.as_deref().unwrap_or_default()
                )));
            }
            self.pos += 1;
            self.deeper()?;
            let inner = self.or()?;
            if contains_value_path(&inner) {
                return Err(ParseError("value filters cannot be nested".into()));
            }
            self.depth -= 1;
            return match self.next() {
                Some(Token::RBracket) => Ok(Filter::ValuePath(path, Box::new(inner))),
                other => Err(ParseError(format!(
                    "expected \"]\" but found {}",
                    describe(other.as_ref())
                ))),
            };
        }
        let op = match self.next() {
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("pr") => {
                return Ok(Filter::Present(path))
            }
            Some(Token::Word(word)) => CompareOp::parse(&word).ok_or_else(|| {
                ParseError(format!(
                    "{word:?} is not an operator: use eq, ne, co, sw, ew, gt, ge, lt, le or pr"
                ))
            })?,
            other => {
                return Err(ParseError(format!(
                    "expected an operator after {} but found {}",
                    path,
                    describe(other.as_ref())
                )))
            }
        };
        let value = match self.next() {
            Some(Token::Str(text)) => CompValue::Str(text),
            Some(Token::Word(word)) => match word.as_str() {
                "true" => CompValue::Bool(true),
                "false" => CompValue::Bool(false),
                "null" => CompValue::Null,
                _ => match serde_json::from_str::<Value>(&word) {
                    Ok(Value::Number(n)) => CompValue::Number(n),
                    _ => {
                        return Err(ParseError(format!(
                            "{word:?} is not a value: use a \"quoted string\", a number, true, false or null"
                        )))
                    }
                },
            },
            other => {
                return Err(ParseError(format!(
                    "expected a value after {} {} but found {}",
                    path,
                    op.as_str(),
                    describe(other.as_ref())
                )))
            }
        };
        Ok(Filter::Compare(path, op, value))
    }
}

fn contains_value_path(filter: &Filter) -> bool {
    match filter {
        Filter::ValuePath(..) => true,
        Filter::Compare(..) | Filter::Present(_) => false,
        Filter::And(a, b) | Filter::Or(a, b) => contains_value_path(a) || contains_value_path(b),
        Filter::Not(inner) => contains_value_path(inner),
    }
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "the end of the filter".into(),
        Some(Token::LParen) => "\"(\"".into(),
        Some(Token::RParen) => "\")\"".into(),
        Some(Token::LBracket) => "\"[\"".into(),
        Some(Token::RBracket) => "\"]\"".into(),
        Some(Token::Dot) => "\".\"".into(),
        Some(Token::Str(s)) => format!("{}", Value::String(s.clone())),
        Some(Token::Word(w)) => format!("{w:?}"),
    }
}

/// Parses a filter.
pub fn parse_filter(input: &str) -> Result<Filter, ParseError> {
    let tokens = lex(input)?;
    if tokens.is_empty() {
        return Err(ParseError("is empty".into()));
    }
    if tokens.contains(&Token::Dot) {
        return Err(ParseError(
            "has \"].\": a sub-attribute after a value filter belongs in PATCH paths, not filters"
                .into(),
        ));
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let filter = parser.or()?;
    match parser.peek() {
        None => {
            check_date_times(&filter)?;
            Ok(filter)
        }
        Some(token) => Err(ParseError(format!(
            "has {} where \"and\", \"or\" or the end was expected",
            describe(Some(token))
        ))),
    }
}

/// Whether `path` names a `dateTime` attribute: `meta.created` or `meta.lastModified`
/// (the only ones Gatehouse serves), bare or under a core schema URN.
pub fn is_date_time(path: &AttrPath) -> bool {
    path.urn
        .as_deref()
        .is_none_or(|u| u.eq_ignore_ascii_case(USER_SCHEMA) || u.eq_ignore_ascii_case(GROUP_SCHEMA))
        && path.name.eq_ignore_ascii_case("meta")
        && path.sub.as_deref().is_some_and(|s| {
            s.eq_ignore_ascii_case("created") || s.eq_ignore_ascii_case("lastModified")
        })
}

/// An RFC 3339 date-time (any offset, any fraction of a second).
pub fn parse_date_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Comparisons on `dateTime` attributes are chronological (RFC 7644 §3.4.2.2), so their
/// operand must be a date-time and their operator one that orders: said when parsing,
/// not only when some resource happens to be compared.
fn check_date_times(filter: &Filter) -> Result<(), ParseError> {
    match filter {
        Filter::Compare(path, op, value) if is_date_time(path) => {
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(ParseError(format!(
                    "uses {} on {path}, a dateTime: use eq, ne, gt, ge, lt or le",
                    op.as_str()
                )));
            }
            match value {
                CompValue::Null => Ok(()),
                CompValue::Str(text) if parse_date_time(text).is_some() => Ok(()),
                other => Err(ParseError(format!(
                    "compares {path}, a dateTime, with {other}, which is not an RFC 3339 date-time such as \"2026-12-07T16:33:44Z\" or \"2026-12-07T17:33:44.5+01:00\""
                ))),
            }
        }
        Filter::Compare(..) | Filter::Present(_) | Filter::ValuePath(..) => Ok(()),
        Filter::And(a, b) | Filter::Or(a, b) => {
            check_date_times(a)?;
            check_date_times(b)
        }
        Filter::Not(inner) => check_date_times(inner),
    }
}

/// Parses a PATCH path.
pub fn parse_path(input: &str) -> Result<PatchPath, ParseError> {
    let tokens = lex(input)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let attr = match parser.next() {
        Some(Token::Word(word)) => parse_attr_path(&word)?,
        other => {
            return Err(ParseError(format!(
                "expected an attribute name but found {}",
                describe(other.as_ref())
            )))
        }
    };
    let mut path = PatchPath {
        attr,
        filter: None,
        sub: None,
    };
    if parser.peek() == Some(&Token::LBracket) {
        if path.attr.sub.is_some() {
            return Err(ParseError(
                "a value filter must follow the attribute, not its sub-attribute".into(),
            ));
        }
        parser.pos += 1;
        parser.depth = 1;
        let inner = parser.or()?;
        if contains_value_path(&inner) {
            return Err(ParseError("value filters cannot be nested".into()));
        }
        match parser.next() {
            Some(Token::RBracket) => {}
            other => {
                return Err(ParseError(format!(
                    "expected \"]\" but found {}",
                    describe(other.as_ref())
                )))
            }
        }
        path.filter = Some(inner);
        if parser.peek() == Some(&Token::Dot) {
            parser.pos += 1;
            match parser.next() {
                Some(Token::Word(sub)) if is_name(&sub) => path.sub = Some(sub),
                other => {
                    return Err(ParseError(format!(
                        "expected a sub-attribute after \"].\" but found {}",
                        describe(other.as_ref())
                    )))
                }
            }
        }
    }
    match parser.next() {
        None => Ok(path),
        Some(token) => Err(ParseError(format!(
            "has {} after the path",
            describe(Some(&token))
        ))),
    }
}

// ------------------------------------------------------------------ printing

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CompValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompValue::Bool(b) => write!(f, "{b}"),
            CompValue::Null => write!(f, "null"),
            CompValue::Number(n) => write!(f, "{n}"),
            CompValue::Str(s) => write!(f, "{}", Value::String(s.clone())),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn side(f: &mut fmt::Formatter<'_>, filter: &Filter) -> fmt::Result {
            match filter {
                Filter::And(..) | Filter::Or(..) => write!(f, "({filter})"),
                _ => write!(f, "{filter}"),
            }
        }
        match self {
            Filter::Compare(path, op, value) => write!(f, "{path} {} {value}", op.as_str()),
            Filter::Present(path) => write!(f, "{path} pr"),
            Filter::And(a, b) => {
                side(f, a)?;
                write!(f, " and ")?;
                side(f, b)
            }
            Filter::Or(a, b) => {
                side(f, a)?;
                write!(f, " or ")?;
                side(f, b)
            }
            Filter::Not(inner) => write!(f, "not ({inner})"),
            Filter::ValuePath(path, inner) => write!(f, "{path}[{inner}]"),
        }
    }
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.attr)?;
        if let Some(filter) = &self.filter {
            write!(f, "[{filter}]")?;
        }
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ evaluation

/// Attributes whose string values compare case-sensitively (RFC 7643 `caseExact`).
fn case_exact(path: &AttrPath) -> bool {
    let name = path.name.to_ascii_lowercase();
    (name == "id" || name == "externalid" || (name == "members" && path.sub.is_some()))
        && path.urn.is_none()
}

/// A key of `object` equal to `name` case-insensitively.
pub fn get_ci<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The base object a path starts from: the resource, or its extension object.
fn base<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    match &path.urn {
        None => Some(resource),
        Some(urn)
            if urn.eq_ignore_ascii_case(USER_SCHEMA) || urn.eq_ignore_ascii_case(GROUP_SCHEMA) =>
        {
            Some(resource)
        }
        Some(urn) => get_ci(resource, urn),
    }
}

/// The values `path` names in `resource` (flattening multi-valued attributes; a complex
/// value without a sub-attribute stands for its `value`).
pub fn values<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let mut out = Vec::new();
    let Some(top) = base(resource, path).and_then(|b| get_ci(b, &path.name)) else {
        return out;
    };
    let items: Vec<&Value> = match top {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for item in items {
        let leaf = match &path.sub {
            Some(sub) => get_ci(item, sub),
            None if item.is_object() => get_ci(item, "value"),
            None => Some(item),
        };
        match leaf {
            Some(Value::Array(inner)) => out.extend(inner.iter()),
            Some(Value::Null) | None => {}
            Some(v) => out.push(v),
        }
    }
    out
}

fn present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Why a filter cannot be evaluated (e.g. `gt` on a boolean).
pub type EvalError = ParseError;

fn compare(
    actual: &Value,
    op: CompareOp,
    expected: &CompValue,
    exact: bool,
    date_time: bool,
) -> Result<bool, EvalError> {
    use std::cmp::Ordering;
    if date_time {
        if let (Value::String(a), CompValue::Str(e)) = (actual, expected) {
            return compare_instants(a, op, e);
        }
    }
    let fold = |s: &str| {
        if exact {
            s.to_owned()
        } else {
            s.to_lowercase()
        }
    };
    Ok(match (actual, expected) {
        (Value::String(a), CompValue::Str(e)) => {
            let (a, e) = (fold(a), fold(e));
            match op {
                CompareOp::Eq => a == e,
                CompareOp::Ne => a != e,
                CompareOp::Co => a.contains(&e),
                CompareOp::Sw => a.starts_with(&e),
                CompareOp::Ew => a.ends_with(&e),
                CompareOp::Gt => a > e,
                CompareOp::Ge => a >= e,
                CompareOp::Lt => a < e,
                CompareOp::Le => a <= e,
            }
        }
        (Value::Bool(a), CompValue::Bool(e)) => match op {
            CompareOp::Eq => a == e,
            CompareOp::Ne => a != e,
            _ => {
                return Err(ParseError(format!(
                    "operator {} does not apply to booleans: use eq or ne",
                    op.as_str()
                )))
            }
        },
        (Value::Number(a), CompValue::Number(e)) => {
            let ord = a
                .as_f64()
                .zip(e.as_f64())
                .and_then(|(a, e)| a.partial_cmp(&e))
                .unwrap_or(Ordering::Equal);
            by_order(op, ord, "numbers")?
        }
        (_, CompValue::Null) => matches!(op, CompareOp::Ne),
        _ => matches!(op, CompareOp::Ne),
    })
}

/// `actual op expected` for two date-times, as instants: `…44Z`, `…45+01:00` and
/// `…44.000Z` are one instant, and `…44.84Z` is after `…44Z`. A stored value that is
/// not a date-time equals no operand and is ordered against none.
fn compare_instants(actual: &str, op: CompareOp, expected: &str) -> Result<bool, EvalError> {
    let Some(e) = parse_date_time(expected) else {
        return Err(ParseError(format!(
            "compares a dateTime with {expected:?}, which is not an RFC 3339 date-time"
        )));
    };
    let Some(a) = parse_date_time(actual) else {
        return Ok(op == CompareOp::Ne);
    };
    by_order(
        op,
        a.cmp(&e),
        "dateTime attributes: use eq, ne, gt, ge, lt or le",
    )
}

/// Whether `op` holds for values ordered `ord` (actual against expected); the string
/// operators do not apply to `what`.
fn by_order(op: CompareOp, ord: std::cmp::Ordering, what: &str) -> Result<bool, EvalError> {
    use std::cmp::Ordering;
    Ok(match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => {
            return Err(ParseError(format!(
                "operator {} does not apply to {what}",
                op.as_str()
            )))
        }
    })
}

impl Filter {
    /// Whether `resource` (a SCIM resource's JSON) matches.
    pub fn matches(&self, resource: &Value) -> Result<bool, EvalError> {
        Ok(match self {
            Filter::Present(path) => values(resource, path).into_iter().any(present),
            Filter::Compare(path, op, expected) => {
                let found = values(resource, path);
                let exact = case_exact(path);
                let date_time = is_date_time(path);
                if *op == CompareOp::Ne {
                    // "ne": no value equals the operand.
                    let mut any_equal = false;
                    for v in &found {
                        any_equal |= compare(v, CompareOp::Eq, expected, exact, date_time)?;
                    }
                    if matches!(expected, CompValue::Null) {
                        !found.is_empty()
                    } else {
                        !any_equal
                    }
                } else if matches!(expected, CompValue::Null) {
                    *op == CompareOp::Eq && found.is_empty()
                } else {
                    let mut any = false;
                    for v in found {
                        any |= compare(v, *op, expected, exact, date_time)?;
                    }
                    any
                }
            }
            Filter::And(a, b) => a.matches(resource)? && b.matches(resource)?,
            Filter::Or(a, b) => a.matches(resource)? || b.matches(resource)?,
            Filter::Not(inner) => !inner.matches(resource)?,
            Filter::ValuePath(path, inner) => {
                let Some(top) = base(resource, path).and_then(|b| get_ci(b, &path.name)) else {
                    return Ok(false);
                };
                match top {
                    Value::Array(items) => {
                        let mut any = false;
                        for item in items {
                            any |= inner.matches(item)?;
                        }
                        any
                    }
                    Value::Object(_) => inner.matches(top)?,
                    _ => false,
                }
            }
        })
    }

    /// If the filter requires `attr eq "value"` (at its top, or on one side of a top
    /// `and`), that value: the candidates can come from an index.
    pub fn indexed_eq(&self, attr: &str) -> Option<&str> {
        match self {
            Filter::Compare(path, CompareOp::Eq, CompValue::Str(value))
                if path.urn.as_deref().is_none_or(|u| {
                    u.eq_ignore_ascii_case(USER_SCHEMA) || u.eq_ignore_ascii_case(GROUP_SCHEMA)
                }) && full_name(path).eq_ignore_ascii_case(attr) =>
            {
                Some(value)
            }
            Filter::ValuePath(path, inner)
                if path.urn.is_none() && path.name.eq_ignore_ascii_case("emails") =>
            {
                attr.eq_ignore_ascii_case("emails.value")
                    .then(|| inner.indexed_eq("value"))
                    .flatten()
            }
            Filter::And(a, b) => a.indexed_eq(attr).or_else(|| b.indexed_eq(attr)),
            _ => None,
        }
    }
}

fn full_name(path: &AttrPath) -> String {
    match &path.sub {
        Some(sub) => format!("{}.{sub}", path.name),
        None => path.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(text: &str) -> Filter {
        let filter = parse_filter(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let printed = filter.to_string();
        let again = parse_filter(&printed).unwrap_or_else(|e| panic!("{printed}: {e}"));
        assert_eq!(filter, again, "{text} → {printed}");
        filter
    }

    #[test]
    fn the_rfc_examples_parse_and_round_trip() {
        for text in [
            r#"userName Eq "john""#,
            r#"name.familyName co "O'Malley""#,
            r#"userName sw "J""#,
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
            r#"title pr"#,
            r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
            r#"title pr and userType eq "Employee""#,
            r#"title pr or userType eq "Intern""#,
            r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#,
            r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
            r#"userType eq "Employee" and (emails.type eq "work")"#,
            r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
            r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "7""#,
            r#"x eq 1.5e3 and y eq -2 and z eq null and w eq false"#,
            r#"NOT (a eq "x") OR b PR AND c eq "\"q\"""#,
        ] {
            roundtrip(text);
        }
    }

    #[test]
    fn operators_and_names_are_case_insensitive_and_and_binds_tighter() {
        let filter = roundtrip(r#"a EQ "1" OR b eq "2" AnD c eq "3""#);
        let Filter::Or(_, right) = filter else {
            panic!("or on top")
        };
        assert!(matches!(*right, Filter::And(..)));
        let user = json!({"userName": "Ann@Acme.io", "emails": [{"value": "ann@work.io", "type": "work"}]});
        assert!(parse_filter(r#"USERNAME eq "ann@acme.IO""#)
            .unwrap()
            .matches(&user)
            .unwrap());
        assert!(
            parse_filter(r#"emails[TYPE eq "work" and value co "@work"]"#)
                .unwrap()
                .matches(&user)
                .unwrap()
        );
        assert!(!parse_filter(r#"emails[type eq "home"]"#)
            .unwrap()
            .matches(&user)
            .unwrap());
        assert!(parse_filter(r#"emails co "work.io""#)
            .unwrap()
            .matches(&user)
            .unwrap());
        assert!(parse_filter(r#"not (title pr)"#)
            .unwrap()
            .matches(&user)
            .unwrap());
    }

    #[test]
    fn malformed_filters_say_why() {
        for (text, needle) in [
            ("", "empty"),
            ("userName", "expected an operator"),
            (r#"userName eq"#, "expected a value"),
            (r#"userName xx "a""#, "not an operator"),
            (r#"userName eq "a"#, "unterminated"),
            (r#"userName eq a"#, "not a value"),
            (r#"(userName eq "a""#, "expected \")\""),
            (r#"userName eq "a")"#, "where \"and\""),
            (r#"emails[type eq "w""#, "expected \"]\""),
            (r#"emails[a[b eq "c"]]"#, "nested"),
            (r#"1abc eq "x""#, "not an attribute path"),
            (r#"urn:x: eq "x""#, "names no attribute"),
            (r#"a eq "x" and"#, "expected an attribute"),
            (r#"emails[type eq "w"].value eq "x""#, "PATCH paths"),
        ] {
            let err = parse_filter(text).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
        let deep = format!("{}a pr{}", "(".repeat(100), ")".repeat(100));
        assert!(parse_filter(&deep).unwrap_err().0.contains("deeper"));
        assert!(parse_filter(&"a".repeat(5000))
            .unwrap_err()
            .0
            .contains("longer"));
        let err = parse_filter("active gt true")
            .unwrap()
            .matches(&json!({"active": true}))
            .unwrap_err();
        assert!(err.0.contains("booleans"), "{err}");
    }

    #[test]
    fn patch_paths_parse_and_round_trip() {
        for (text, name, has_filter, sub) in [
            ("members", "members", false, None),
            (r#"members[value eq "2819c223"]"#, "members", true, None),
            (
                r#"emails[type eq "work"].value"#,
                "emails",
                true,
                Some("value"),
            ),
            ("name.givenName", "name", false, None),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
                "employeeNumber",
                false,
                None,
            ),
        ] {
            let path = parse_path(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(path.attr.name, name);
            assert_eq!(path.filter.is_some(), has_filter);
            assert_eq!(path.sub.as_deref(), sub);
            assert_eq!(parse_path(&path.to_string()).unwrap(), path);
        }
        let path =
            parse_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value")
                .unwrap();
        assert_eq!(path.attr.urn.as_deref(), Some(ENTERPRISE_SCHEMA));
        assert_eq!(path.attr.sub.as_deref(), Some("value"));
        for bad in [
            "",
            "a b",
            "members[",
            r#"members[value eq "x"]x"#,
            "a.b.c",
            "emails[type eq \"w\"].",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn date_times_compare_as_instants() {
        let user = json!({"meta": {"created": "2026-12-07T16:00:00Z", "lastModified": "2026-12-07T16:33:44.84Z"}});
        let check = |text: &str| parse_filter(text).unwrap().matches(&user).unwrap();
        for (text, expected) in [
            (r#"meta.lastModified gt "2026-12-07T16:33:44Z""#, true),
            (r#"meta.lastModified gt "2026-12-07T17:33:44+01:00""#, true),
            (r#"meta.lastModified gt "2026-12-07T15:33:44-01:00""#, true),
            (r#"meta.lastModified gt "2026-12-07T16:33:44+00:00""#, true),
            (r#"meta.lastModified lt "2026-12-07T16:33:44.9Z""#, true),
            (
                r#"meta.lastModified eq "2026-12-07T17:33:44.840+01:00""#,
                true,
            ),
            (
                r#"meta.lastModified ne "2026-12-07T17:33:44.840+01:00""#,
                false,
            ),
            (
                r#"meta.lastModified ge "2026-12-07T16:33:44.840000Z""#,
                true,
            ),
            (r#"meta.lastModified le "2026-12-07T16:33:44.839Z""#, false),
            (r#"meta.created lt "2026-12-07T17:00:00.5+01:00""#, true),
            (r#"META.CREATED ge "2026-12-07t16:00:00z""#, true),
            (
                r#"urn:ietf:params:scim:schemas:core:2.0:User:meta.created gt "2026-12-07T16:00:00Z""#,
                false,
            ),
        ] {
            assert_eq!(check(text), expected, "{text}");
        }
        for (text, needle) in [
            (
                r#"meta.lastModified gt "yesterday""#,
                "not an RFC 3339 date-time",
            ),
            (
                r#"meta.created ge "2026-12-07""#,
                "not an RFC 3339 date-time",
            ),
            (r#"meta.created gt 5"#, "not an RFC 3339 date-time"),
            (
                r#"title pr and not (meta.created lt true)"#,
                "not an RFC 3339",
            ),
            (r#"meta.created sw "2026""#, "use eq, ne, gt, ge, lt or le"),
        ] {
            let err = parse_filter(text).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn indexed_lookups_are_recognised() {
        let f = parse_filter(r#"userName eq "a@b.io" and active eq true"#).unwrap();
        assert_eq!(f.indexed_eq("username"), Some("a@b.io"));
        let f = parse_filter(r#"emails[type eq "work" and value eq "x@y.io"]"#).unwrap();
        assert_eq!(f.indexed_eq("emails.value"), Some("x@y.io"));
        let f = parse_filter(r#"userName eq "a" or userName eq "b""#).unwrap();
        assert_eq!(f.indexed_eq("userName"), None);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            "[a-zA-Z][a-zA-Z0-9_-]{0,6}".prop_filter("not a keyword", |n| {
                !["and", "or", "not", "pr", "true", "false", "null"]
                    .contains(&n.to_ascii_lowercase().as_str())
            })
        }

        fn attr() -> impl Strategy<Value = AttrPath> {
            (
                proptest::option::of(Just(ENTERPRISE_SCHEMA.to_owned())),
                name(),
                proptest::option::of(name()),
            )
                .prop_map(|(urn, name, sub)| AttrPath { urn, name, sub })
        }

        fn value() -> impl Strategy<Value = CompValue> {
            prop_oneof![
                any::<bool>().prop_map(CompValue::Bool),
                Just(CompValue::Null),
                any::<i64>().prop_map(|n| CompValue::Number(n.into())),
                ".{0,12}".prop_map(CompValue::Str),
            ]
        }

        fn op() -> impl Strategy<Value = CompareOp> {
            prop_oneof![
                Just(CompareOp::Eq),
                Just(CompareOp::Ne),
                Just(CompareOp::Co),
                Just(CompareOp::Sw),
                Just(CompareOp::Ew),
                Just(CompareOp::Gt),
                Just(CompareOp::Ge),
                Just(CompareOp::Lt),
                Just(CompareOp::Le),
            ]
        }

        fn simple() -> impl Strategy<Value = Filter> {
            prop_oneof![
                (attr(), op(), value()).prop_map(|(a, o, v)| Filter::Compare(a, o, v)),
                attr().prop_map(Filter::Present),
            ]
        }

        fn logical(leaf: BoxedStrategy<Filter>) -> BoxedStrategy<Filter> {
            leaf.prop_recursive(4, 24, 2, |inner| {
                prop_oneof![
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
                    inner.prop_map(|f| Filter::Not(Box::new(f))),
                ]
            })
            .boxed()
        }

        fn filter() -> impl Strategy<Value = Filter> {
            let value_path = (
                (
                    proptest::option::of(Just(ENTERPRISE_SCHEMA.to_owned())),
                    name(),
                )
                    .prop_map(|(urn, name)| AttrPath {
                        urn,
                        name,
                        sub: None,
                    }),
                logical(simple().boxed()),
            )
                .prop_map(|(a, f)| Filter::ValuePath(a, Box::new(f)));
            logical(prop_oneof![simple(), value_path].boxed())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn parse_print_parse_round_trips(f in filter()) {
                let printed = f.to_string();
                let parsed = parse_filter(&printed);
                prop_assert_eq!(parsed.as_ref().ok(), Some(&f), "{} → {:?}", printed, parsed);
            }

            #[test]
            fn arbitrary_text_never_panics(text in ".{0,200}") {
                let _ = parse_filter(&text);
                let _ = parse_path(&text);
            }

            #[test]
            fn filter_like_text_never_panics(
                text in r#"([a-z.:\[\]()" ]|eq|and|or|not|pr|emails|\\|"x"){0,40}"#
            ) {
                if let Ok(f) = parse_filter(&text) {
                    let _ = f.matches(&serde_json::json!({"emails": [{"value": "a", "type": "w"}], "a": 1}));
                    prop_assert_eq!(parse_filter(&f.to_string()).ok(), Some(f));
                }
                if let Ok(p) = parse_path(&text) {
                    prop_assert_eq!(parse_path(&p.to_string()).ok(), Some(p));
                }
            }
        }
    }
}
