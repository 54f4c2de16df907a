//! A thin layer over a span-preserving `toml_edit` document: typed access to
//! keys with diagnostics that carry key paths and source positions, and
//! detection of unknown keys.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{InlineTable, Item, Key, Table, Value};

use crate::error::Diagnostics;
use crate::suggest::closest;

pub(crate) type Span = Option<Range<usize>>;

/// A value with the position and key path it was read from.
#[derive(Debug, Clone)]
pub(crate) struct Sp<T> {
    pub(crate) v: T,
    pub(crate) span: Span,
    pub(crate) path: String,
}

impl<T> Sp<T> {
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Sp<U> {
        Sp {
            v: f(self.v),
            span: self.span,
            path: self.path,
        }
    }
}

#[derive(Clone, Copy)]
enum TableRef<'a> {
    Empty,
    Std(&'a Table),
    Inline(&'a InlineTable),
}

impl<'a> TableRef<'a> {
    fn keys(self) -> Vec<&'a str> {
        match self {
            TableRef::Empty => Vec::new(),
            TableRef::Std(t) => t.iter().map(|(k, _)| k).collect(),
            TableRef::Inline(t) => t.iter().map(|(k, _)| k).collect(),
        }
    }

    fn get(self, key: &str) -> Option<(&'a Key, &'a Item)> {
        match self {
            TableRef::Empty => None,
            TableRef::Std(t) => t.get_key_value(key),
            TableRef::Inline(t) => t.get_key_value(key),
        }
        .filter(|(_, item)| !item.is_none())
    }
}

/// A table being read. Every key asked for (present or not) becomes a
/// "known" key; [`Tbl::finish`] reports the rest as unknown.
pub(crate) struct Tbl<'a> {
    t: TableRef<'a>,
    pub(crate) path: String,
    pub(crate) span: Span,
    known: Vec<&'static str>,
}

/// One present key of a table.
pub(crate) struct Field<'a> {
    node: Node<'a>,
    pub(crate) span: Span,
    pub(crate) key_span: Span,
    pub(crate) path: String,
}

pub(crate) fn item_type(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => value_type(v),
    }
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date/time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

pub(crate) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Formats a list of names as "`a`, `b` or `c`".
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

impl<'a> Tbl<'a> {
    pub(crate) fn root(t: &'a Table) -> Tbl<'a> {
        Tbl {
            t: TableRef::Std(t),
            path: String::new(),
            span: Some(0..0),
            known: Vec::new(),
        }
    }

    /// A stand-in for an absent table: every key reads as missing.
    pub(crate) fn empty(path: &str, span: Span) -> Tbl<'a> {
        Tbl {
            t: TableRef::Empty,
            path: path.to_string(),
            span,
            known: Vec::new(),
        }
    }

    /// Marks keys as valid without reading them.
    pub(crate) fn declare(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.t.get(key).is_some()
    }

    pub(crate) fn child(&self, key: &str) -> String {
        join_path(&self.path, key)
    }

    /// The key, if present.
    pub(crate) fn field(&mut self, key: &'static str) -> Option<Field<'a>> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        let (k, item) = self.t.get(key)?;
        let key_span = k.span();
        let span = item
            .span()
            .or_else(|| key_span.clone())
            .or(self.span.clone());
        Some(Field {
            node: Node::Item(item),
            span,
            key_span: key_span.or(self.span.clone()),
            path: self.child(key),
        })
    }

    /// Reports `key` as missing (at the table's own position).
    pub(crate) fn missing(&self, d: &mut Diagnostics, key: &str, what: &str) {
        d.error(
            self.span.clone(),
            self.child(key),
            format!("missing required {what}"),
        );
    }

    /// Reports every key that was never asked for.
    pub(crate) fn finish(self, d: &mut Diagnostics) {
        for key in self.t.keys() {
            if self.known.contains(&key) {
                continue;
            }
            let span = self
                .t
                .get(key)
                .and_then(|(k, item)| k.span().or_else(|| item.span()))
                .or(self.span.clone());
            let message = match closest(key, self.known.iter().copied()) {
                Some(s) => format!("unknown key, did you mean `{s}`?"),
                None if self.known.is_empty() => "unknown key".to_string(),
                None => format!("unknown key, expected {}", one_of(&self.known)),
            };
            d.error(span, self.child(key), message);
        }
    }

    // ----- typed accessors --------------------------------------------------

    pub(crate) fn str(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Sp<String>> {
        self.field(key)?.str(d)
    }

    pub(crate) fn req_str(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Sp<String>> {
        match self.field(key) {
            Some(f) => f.str(d),
            None => {
                self.missing(d, key, "key");
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Sp<bool>> {
        self.field(key)?.bool(d)
    }

    pub(crate) fn int(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<Sp<i64>> {
        self.field(key)?.int(d, min, max)
    }

    /// An integer with a default (the default is returned on type errors
    /// too, the error is recorded).
    pub(crate) fn int_or(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Sp<i64> {
        let path = self.child(key);
        self.int(d, key, min, max).unwrap_or(Sp {
            v: default,
            span: self.span.clone(),
            path,
        })
    }

    pub(crate) fn u16_or(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        min: u16,
        max: u16,
        default: u16,
    ) -> Sp<u16> {
        self.int_or(d, key, min.into(), max.into(), default.into())
            .map(|v| u16::try_from(v).unwrap_or(default))
    }

    pub(crate) fn u32_or(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        min: u32,
        max: u32,
        default: u32,
    ) -> Sp<u32> {
        self.int_or(d, key, min.into(), max.into(), default.into())
            .map(|v| u32::try_from(v).unwrap_or(default))
    }

    /// Whole seconds as a `Duration`.
    pub(crate) fn secs_or(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Sp<Duration> {
        self.int_or(d, key, min as i64, max as i64, default as i64)
            .map(|v| Duration::from_secs(u64::try_from(v).unwrap_or(default)))
    }

    /// Milliseconds as a `Duration`.
    pub(crate) fn millis_or(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Sp<Duration> {
        self.int_or(d, key, min as i64, max as i64, default as i64)
            .map(|v| Duration::from_millis(u64::try_from(v).unwrap_or(default)))
    }

    pub(crate) fn bool_or(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        default: bool,
    ) -> bool {
        self.bool(d, key).map_or(default, |b| b.v)
    }

    pub(crate) fn str_list(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
    ) -> Option<Vec<Sp<String>>> {
        let f = self.field(key)?;
        let elems = f.array(d)?;
        Some(elems.into_iter().filter_map(|e| e.str(d)).collect())
    }

    /// A string that must be one of `choices` (given as `(text, value)`).
    pub(crate) fn choice<T: Copy>(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        choices: &[(&'static str, T)],
    ) -> Option<Sp<T>> {
        self.field(key)?.choice(d, choices)
    }

    pub(crate) fn table(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Tbl<'a>> {
        self.field(key)?.table(d)
    }

    /// An array of tables, written either as `[[key]]` sections or as an
    /// array of inline tables.
    pub(crate) fn tables(&mut self, d: &mut Diagnostics, key: &'static str) -> Vec<Tbl<'a>> {
        match self.field(key) {
            Some(f) => f.tables(d),
            None => Vec::new(),
        }
    }
}

impl<'a> Field<'a> {
    fn type_error(&self, d: &mut Diagnostics, expected: &str) {
        d.error(
            self.span.clone(),
            self.path.clone(),
            format!("expected {expected}, found {}", self.node.type_name()),
        );
    }

    fn sp<T>(&self, v: T) -> Sp<T> {
        Sp {
            v,
            span: self.span.clone(),
            path: self.path.clone(),
        }
    }

    pub(crate) fn str(&self, d: &mut Diagnostics) -> Option<Sp<String>> {
        match self.node.value().and_then(Value::as_str) {
            Some(s) => Some(self.sp(s.to_string())),
            None => {
                self.type_error(d, "a string");
                None
            }
        }
    }

    pub(crate) fn bool(&self, d: &mut Diagnostics) -> Option<Sp<bool>> {
        match self.node.value().and_then(Value::as_bool) {
            Some(b) => Some(self.sp(b)),
            None => {
                self.type_error(d, "a boolean (`true` or `false`)");
                None
            }
        }
    }

    pub(crate) fn int(&self, d: &mut Diagnostics, min: i64, max: i64) -> Option<Sp<i64>> {
        match self.node.value().and_then(Value::as_integer) {
            Some(i) if (min..=max).contains(&i) => Some(self.sp(i)),
            Some(i) => {
                d.error(
                    self.span.clone(),
                    self.path.clone(),
                    format!("must be between {min} and {max}, got {i}"),
                );
                None
            }
            None => {
                self.type_error(d, "an integer");
                None
            }
        }
    }

    pub(crate) fn choice<T: Copy>(
        &self,
        d: &mut Diagnostics,
        choices: &[(&'static str, T)],
    ) -> Option<Sp<T>> {
        let s = self.str(d)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s.v) {
            return Some(self.sp(*v));
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let hint = match closest(&s.v, names.iter().copied()) {
            Some(c) => format!(", did you mean `{c}`?"),
            None => String::new(),
        };
        d.error(
            self.span.clone(),
            self.path.clone(),
            format!("expected {}, got `{}`{hint}", one_of(&names), s.v),
        );
        None
    }

    /// Whether the value is an array (to accept a string or a list of them).
    pub(crate) fn is_array(&self) -> bool {
        self.node.value().is_some_and(Value::is_array)
    }

    /// Elements of an array, each with its own path (`key[i]`) and span.
    pub(crate) fn array(&self, d: &mut Diagnostics) -> Option<Vec<Field<'a>>> {
        let Some(arr) = self.node.value().and_then(Value::as_array) else {
            self.type_error(d, "an array");
            return None;
        };
        Some(
            arr.iter()
                .enumerate()
                .map(|(i, v)| Field {
                    node: Node::Value(v),
                    span: v.span().or(self.span.clone()),
                    key_span: self.key_span.clone(),
                    path: format!("{}[{i}]", self.path),
                })
                .collect(),
        )
    }

    pub(crate) fn table(&self, d: &mut Diagnostics) -> Option<Tbl<'a>> {
        let t = match self.node {
            Node::Item(Item::Table(t)) => TableRef::Std(t),
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                TableRef::Inline(t)
            }
            _ => {
                self.type_error(d, "a table");
                return None;
            }
        };
        let own = match t {
            TableRef::Empty => None,
            TableRef::Std(t) => t.span(),
            TableRef::Inline(t) => t.span(),
        };
        Some(Tbl {
            t,
            path: self.path.clone(),
            span: own.or(self.key_span.clone()),
            known: Vec::new(),
        })
    }

    pub(crate) fn tables(&self, d: &mut Diagnostics) -> Vec<Tbl<'a>> {
        match self.node {
            Node::Item(Item::ArrayOfTables(arr)) => arr
                .iter()
                .enumerate()
                .map(|(i, t)| Tbl {
                    t: TableRef::Std(t),
                    path: format!("{}[{i}]", self.path),
                    span: t.span().or(self.span.clone()),
                    known: Vec::new(),
                })
                .collect(),
            Node::Item(Item::Value(Value::Array(_))) => {
                let Some(elems) = self.array(d) else {
                    return Vec::new();
                };
                elems.iter().filter_map(|e| e.table(d)).collect()
            }
            _ => {
                self.type_error(d, "an array of tables");
                Vec::new()
            }
        }
    }
}

/// A present value: either a table entry (`Item`) or an array element
/// (`Value`).
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn value(self) -> Option<&'a Value> {
        match self {
            Node::Item(Item::Value(v)) | Node::Value(v) => Some(v),
            Node::Item(_) => None,
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Node::Item(i) => item_type(i),
            Node::Value(v) => value_type(v),
        }
    }
}
