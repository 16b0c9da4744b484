//! Subjects with NATS's rules: dot-separated tokens; in subscriptions `*` matches one token and
//! `>` (last only) matches one or more.

use super::BusError;

/// The longest subject accepted.
pub(crate) const MAX_SUBJECT: usize = 1024;

fn check(subject: &str, wildcards: bool) -> Result<(), BusError> {
    let bad = |why: &str| Err(BusError::InvalidSubject(format!("{subject:?}: {why}")));
    if subject.is_empty() {
        return bad("empty");
    }
    if subject.len() > MAX_SUBJECT {
        return bad("longer than 1024 bytes");
    }
    // One pass over the bytes (every publish and submission passes here, on both ends);
    // whitespace beyond ASCII is looked for only in the rare subject that is not ASCII.
    let mut tokens = subject.as_bytes().split(|b| *b == b'.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() {
            return bad("empty token");
        }
        let mut star_or_gt = false;
        for b in t {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => return bad("whitespace"),
                b'*' | b'>' => star_or_gt = true,
                _ => {}
            }
        }
        if !star_or_gt {
            continue;
        }
        let wild = t == b"*" || t == b">";
        if !wild {
            return bad("'*' and '>' must be whole tokens");
        }
        if !wildcards {
            return bad("wildcards are only for subscriptions");
        }
        if t == b">" && tokens.peek().is_some() {
            return bad("'>' must be the last token");
        }
    }
    if !subject.is_ascii() && subject.chars().any(char::is_whitespace) {
        return bad("whitespace");
    }
    Ok(())
}

/// A subject to publish to: no wildcards.
pub(crate) fn check_publish(subject: &str) -> Result<(), BusError> {
    check(subject, false)
}

/// A subject to subscribe to: wildcards allowed.
pub(crate) fn check_subscribe(subject: &str) -> Result<(), BusError> {
    check(subject, true)
}

pub(crate) fn has_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|t| t == "*" || t == ">")
}

/// Whether `subject` (no wildcards) matches `pattern`.
pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Makes any text safe as one subject token (uids and group names may hold dots or spaces):
/// plain `[A-Za-z0-9_-]` text stays as it is, anything else becomes `~` + lowercase hex.
pub(crate) fn token(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return text.to_string();
    }
    hex_escaped('~', text)
}

/// `mark` followed by the lowercase hex of `text`'s bytes.
pub(crate) fn hex_escaped(mark: char, text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(1 + text.len() * 2);
    out.push(mark);
    for b in text.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches(">", "x"));
    }

    #[test]
    fn bad_subjects_are_refused() {
        // (subject, fine to publish to, fine to subscribe to)
        let cases = [
            ("a.b", true, true),
            ("a.*", false, true),
            ("a.*.>", false, true),
            ("a..b", false, false),
            ("a b", false, false),
            ("a\tb", false, false),
            ("a.\u{a0}b", false, false),
            ("héllo.wörld", true, true),
            ("a.>.b", false, false),
            ("a.b*", false, false),
            ("a.b>", false, false),
            (">", false, true),
            ("a.", false, false),
            (".a", false, false),
        ];
        for (subject, publish, subscribe) in cases {
            assert_eq!(
                check_publish(subject).is_ok(),
                publish,
                "publish {subject:?}"
            );
            assert_eq!(
                check_subscribe(subject).is_ok(),
                subscribe,
                "subscribe {subject:?}"
            );
        }
    }

    #[test]
    fn tokens_escape_anything_unsafe() {
        assert_eq!(token("room-1"), "room-1");
        assert_eq!(token("a.b"), "~612e62");
        assert!(check_publish(&format!("x.{}", token("héllo wörld"))).is_ok());
    }
}
