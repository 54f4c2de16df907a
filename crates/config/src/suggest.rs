//! "Did you mean" suggestions for misspelt keys and names.

/// Optimal-string-alignment distance (Levenshtein plus adjacent
/// transpositions), case-sensitive, over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The candidate closest to `typed`, if it is close enough to be a
/// plausible typo: distance at most a third of the longer word (at least 1,
/// at most 3), or one word containing the other (e.g. `ipv6_addr`/`ipv6`).
pub(crate) fn closest<'a, I>(typed: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let lower = typed.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = edit_distance(&lower, c);
        let len = lower.chars().count().max(c.chars().count());
        let limit = (len / 3).clamp(1, 3);
        let contains =
            c.len() >= 3 && lower.len() >= 3 && (lower.contains(c) || c.contains(&*lower));
        if d <= limit || contains {
            // Substring hits rank after real near-misses of the same distance.
            let score = if d <= limit { d * 2 } else { d * 2 + 1 };
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, c));
            }
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("port", "port"), 0);
        assert_eq!(edit_distance("prot", "port"), 1); // transposition
        assert_eq!(edit_distance("transport", "transports"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ca", "abc"), 3); // OSA, not full Damerau
    }

    #[test]
    fn suggestions() {
        let keys = ["ipv6", "ipv4", "port", "transports", "domain", "realm"];
        assert_eq!(closest("prot", keys), Some("port"));
        assert_eq!(closest("transport", keys), Some("transports"));
        assert_eq!(closest("Port", keys), Some("port"));
        assert_eq!(closest("ipv6_address", keys), Some("ipv6"));
        assert_eq!(closest("domian", keys), Some("domain"));
        assert_eq!(closest("zzzzzz", keys), None);
        assert_eq!(closest("x", keys), None);
    }
}
