//! Asterisk-style dial patterns such as `_1XXX`, `_0[1-9]X.` or `_+49!`.

use std::fmt;
use std::str::FromStr;

/// A dial pattern. The text starts with `_`; after it:
///
/// | token | matches |
/// | --- | --- |
/// | `X` | any digit `0`-`9` |
/// | `Z` | any digit `1`-`9` |
/// | `N` | any digit `2`-`9` |
/// | `[15-7]` | one character from the set (single characters and ranges) |
/// | `.` | one or more further characters (last token only) |
/// | `!` | zero or more further characters (last token only) |
/// | `-` | ignored (readability, `_1-800-NXX-XXXX`) |
/// | other | itself: digits, letters, `*`, `#`, `+` |
///
/// `X`, `Z`, `N` are case-insensitive. Without `.`/`!` the whole number must
/// match, character for character.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    elems: Vec<Elem>,
    tail: Tail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    Lit(char),
    Range(Vec<(char, char)>),
}

impl Elem {
    fn accepts(&self, c: char) -> bool {
        match self {
            Elem::Lit(l) => c == *l,
            Elem::Range(ranges) => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi),
        }
    }

    /// Whether every character `other` accepts is accepted by `self`.
    fn includes(&self, other: &Elem) -> bool {
        match other {
            Elem::Lit(c) => self.accepts(*c),
            Elem::Range(ranges) => ranges
                .iter()
                .all(|&(lo, hi)| (lo..=hi).all(|c| self.accepts(c))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Exact,
    OneOrMore,
    ZeroOrMore,
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Whether the dialled `number` matches.
    pub fn matches(&self, number: &str) -> bool {
        let mut chars = number.chars();
        for elem in &self.elems {
            let Some(c) = chars.next() else {
                return false;
            };
            if !elem.accepts(c) {
                return false;
            }
        }
        let rest = chars.count();
        match self.tail {
            Tail::Exact => rest == 0,
            Tail::OneOrMore => rest >= 1,
            Tail::ZeroOrMore => true,
        }
    }

    /// The pattern text as written (including the leading `_`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether every number `other` accepts is accepted by `self` too
    /// (exact for these patterns: no `false` answers for covered ones).
    pub fn covers(&self, other: &Pattern) -> bool {
        let (la, lb) = (self.elems.len(), other.elems.len());
        if la > lb
            || !self
                .elems
                .iter()
                .zip(&other.elems)
                .all(|(a, b)| a.includes(b))
        {
            return false;
        }
        match self.tail {
            Tail::ZeroOrMore => true,
            Tail::OneOrMore => lb > la || other.tail == Tail::OneOrMore,
            Tail::Exact => lb == la && other.tail == Tail::Exact,
        }
    }

    /// Whether every number starting with `prefix` is accepted.
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        let n = prefix.chars().count();
        let elems_ok = self.elems.len() <= n
            && self
                .elems
                .iter()
                .zip(prefix.chars())
                .all(|(e, c)| e.accepts(c));
        elems_ok
            && match self.tail {
                Tail::ZeroOrMore => true,
                Tail::OneOrMore => self.elems.len() < n,
                Tail::Exact => false,
            }
    }

    /// Whether every number this pattern accepts starts with `prefix`.
    pub(crate) fn implies_prefix(&self, prefix: &str) -> bool {
        let mut p = prefix.chars();
        let mut elems = self.elems.iter();
        loop {
            let Some(pc) = p.next() else { return true };
            match elems.next() {
                Some(Elem::Lit(l)) if *l == pc => {}
                Some(Elem::Range(r)) if r.iter().all(|&(lo, hi)| lo == pc && hi == pc) => {}
                _ => return false,
            }
        }
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Pattern, PatternError> {
        let Some(body) = text.strip_prefix('_') else {
            return Err(PatternError(format!(
                "pattern `{text}` must start with `_` (use `number` for an exact match)"
            )));
        };
        let digits = |lo, hi| Elem::Range(vec![(lo, hi)]);
        let mut elems = Vec::new();
        let mut tail = Tail::Exact;
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            if tail != Tail::Exact {
                return Err(PatternError(format!(
                    "pattern `{text}`: `.` and `!` may only appear at the end"
                )));
            }
            match c {
                'X' | 'x' => elems.push(digits('0', '9')),
                'Z' | 'z' => elems.push(digits('1', '9')),
                'N' | 'n' => elems.push(digits('2', '9')),
                '.' => tail = Tail::OneOrMore,
                '!' => tail = Tail::ZeroOrMore,
                '-' => {}
                '[' => {
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        if c == ']' {
                            closed = true;
                            break;
                        }
                        if !is_literal(c) {
                            return Err(PatternError(format!(
                                "pattern `{text}`: invalid character `{c}` in `[...]`"
                            )));
                        }
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(hi) if is_literal(hi) && hi >= c => ranges.push((c, hi)),
                                Some(hi) if is_literal(hi) => {
                                    return Err(PatternError(format!(
                                        "pattern `{text}`: range `{c}-{hi}` is backwards"
                                    )))
                                }
                                _ => {
                                    return Err(PatternError(format!(
                                        "pattern `{text}`: incomplete range in `[...]`"
                                    )))
                                }
                            }
                        } else {
                            ranges.push((c, c));
                        }
                    }
                    if !closed {
                        return Err(PatternError(format!("pattern `{text}`: missing `]`")));
                    }
                    if ranges.is_empty() {
                        return Err(PatternError(format!("pattern `{text}`: empty `[]`")));
                    }
                    elems.push(Elem::Range(ranges));
                }
                c if is_literal(c) => elems.push(Elem::Lit(c)),
                c => {
                    return Err(PatternError(format!(
                        "pattern `{text}`: invalid character `{c}`"
                    )))
                }
            }
        }
        if elems.is_empty() && tail == Tail::Exact {
            return Err(PatternError(format!("pattern `{text}` is empty")));
        }
        Ok(Pattern {
            text: text.to_string(),
            elems,
            tail,
        })
    }
}

fn is_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '*' | '#' | '+')
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        s.parse().expect("valid pattern in test")
    }

    #[test]
    fn exact_length_wildcards() {
        let pat = p("_1XXX");
        assert!(pat.matches("1000"));
        assert!(pat.matches("1999"));
        assert!(!pat.matches("2000"));
        assert!(!pat.matches("100"));
        assert!(!pat.matches("10000"));
        assert!(!pat.matches("1a00"));
        assert!(!pat.matches(""));
    }

    #[test]
    fn n_and_z() {
        assert!(p("_NXX").matches("200"));
        assert!(!p("_NXX").matches("100"));
        assert!(!p("_NXX").matches("099"));
        assert!(p("_ZX").matches("10"));
        assert!(!p("_ZX").matches("01"));
        assert!(p("_nxz").matches("901"));
        assert!(!p("_nxz").matches("900"));
    }

    #[test]
    fn sets_and_ranges() {
        let pat = p("_[1-5]X");
        assert!(pat.matches("10"));
        assert!(pat.matches("59"));
        assert!(!pat.matches("60"));
        let pat = p("_[135-7]");
        for ok in ["1", "3", "5", "6", "7"] {
            assert!(pat.matches(ok), "{ok}");
        }
        for bad in ["2", "4", "8", "0", "13"] {
            assert!(!pat.matches(bad), "{bad}");
        }
        assert!(p("_[*#]X").matches("*1"));
    }

    #[test]
    fn trailing_wildcards() {
        let dot = p("_0.");
        assert!(dot.matches("01"));
        assert!(dot.matches("0301234567"));
        assert!(!dot.matches("0"));
        assert!(!dot.matches("1"));
        let bang = p("_0!");
        assert!(bang.matches("0"));
        assert!(bang.matches("0123"));
        assert!(!bang.matches("1"));
        assert!(p("_.").matches("x"));
        assert!(!p("_.").matches(""));
        assert!(p("_!").matches(""));
    }

    #[test]
    fn literals_and_dashes() {
        let pat = p("_+49-30-X.");
        assert!(pat.matches("+493012"));
        assert!(pat.matches("+4930123456"));
        assert!(!pat.matches("+49301"));
        assert!(!pat.matches("+4930"));
        assert!(!pat.matches("004930123"));
        assert!(p("_*9").matches("*9"));
        assert!(p("_#1").matches("#1"));
        assert!(!p("_*9").matches("9"));
    }

    #[test]
    fn covers() {
        assert!(p("_1XX").covers(&p("_11[02]")));
        assert!(p("_1XX").covers(&p("_1[0-9]5")));
        assert!(!p("_1XX").covers(&p("_1XXX")));
        assert!(!p("_11[02]").covers(&p("_1XX")));
        assert!(p("_0.").covers(&p("_0X.")));
        assert!(p("_0.").covers(&p("_01")));
        assert!(!p("_0.").covers(&p("_0")));
        assert!(!p("_0.").covers(&p("_0!")));
        assert!(p("_0!").covers(&p("_0")));
        assert!(p("_0!").covers(&p("_0!")));
        assert!(p("_X.").covers(&p("_0X.")));
        assert!(!p("_Z.").covers(&p("_X.")));
        assert!(p("_[0-9]").covers(&p("_X")));
        assert!(p("_X").covers(&p("_[0-9]")));
        assert!(!p("_N").covers(&p("_Z")));
        assert!(!p("_1XX").covers(&p("_1X.")));
    }

    #[test]
    fn covers_prefix() {
        assert!(p("_0!").covers_prefix("0"));
        assert!(p("_0.").covers_prefix("00"));
        assert!(!p("_0.").covers_prefix("0"));
        assert!(p("_X.").covers_prefix("49"));
        assert!(!p("_0X").covers_prefix("01"));
        assert!(!p("_1X.").covers_prefix("2"));
    }

    #[test]
    fn implies_prefix() {
        assert!(p("_0X.").implies_prefix("0"));
        assert!(p("_0[0]X.").implies_prefix("00"));
        assert!(!p("_0X.").implies_prefix("00"));
        assert!(p("_0X.").implies_prefix(""));
        assert!(!p("_X").implies_prefix("1"));
    }

    #[test]
    fn errors() {
        let err = |s: &str| s.parse::<Pattern>().expect_err("must fail").0;
        assert_eq!(
            err("1XXX"),
            "pattern `1XXX` must start with `_` (use `number` for an exact match)"
        );
        assert_eq!(err("_"), "pattern `_` is empty");
        assert_eq!(
            err("_1.X"),
            "pattern `_1.X`: `.` and `!` may only appear at the end"
        );
        assert_eq!(err("_[1-5"), "pattern `_[1-5`: missing `]`");
        assert_eq!(err("_[]"), "pattern `_[]`: empty `[]`");
        assert_eq!(err("_[5-1]"), "pattern `_[5-1]`: range `5-1` is backwards");
        assert_eq!(err("_[1-]"), "pattern `_[1-]`: incomplete range in `[...]`");
        assert_eq!(err("_1 2"), "pattern `_1 2`: invalid character ` `");
        assert_eq!(p("_1XXX").to_string(), "_1XXX");
    }
}
