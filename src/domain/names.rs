//! Parsed newtypes for everything that crosses a trust boundary.
//!
//! Each type has a fallible `parse` for untrusted input and `as_str`; once you hold one, it is
//! valid, so deeper layers never re-check. Rules here are the ones `PROTOCOL.md` states.

use std::{fmt, sync::Arc};

/// Why an email was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a valid email address is required")]
pub struct InvalidEmail;

/// An email address, trimmed and lowercased, so that `A@B.c ` and `a@b.c` are one account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Deliberately modest: one `@`, a non-empty local part, a dotted domain, no spaces,
    /// control or invisible characters, at most 254 characters (RFC 5321's path limit). NFKC
    /// first, so compatibility look-alikes (full-width letters, ligatures) are one address.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        use unicode_normalization::UnicodeNormalization as _;
        if raw.chars().any(is_invisible) {
            return Err(InvalidEmail);
        }
        let email = raw.nfkc().collect::<String>().trim().to_lowercase();
        let Some((local, domain)) = email.split_once('@') else {
            return Err(InvalidEmail);
        };
        let ok = !local.is_empty()
            && local.len() <= 64
            && email.len() <= 254
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !email.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','));
        if ok { Ok(Self(email)) } else { Err(InvalidEmail) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Characters that show as nothing, or reorder the text around them: zero-width spaces and
/// joiners, bidi controls, the byte-order mark, soft hyphens, variation selectors, tags and other
/// default-ignorable code points. Inside a name or address they make one look like another.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a display name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("display names are 1 to 32 characters, without control or invisible characters")]
pub struct InvalidDisplayName;

/// What rooms show of a user instead of their email: NFKC-normalised, trimmed, runs of white
/// space made one space, 1..=32 characters, no control or invisible characters. Not unique.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, InvalidDisplayName> {
        use unicode_normalization::UnicodeNormalization as _;
        if raw.chars().any(|c| is_invisible(c) || (c.is_control() && !c.is_whitespace())) {
            return Err(InvalidDisplayName);
        }
        let name = raw.nfkc().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ");
        let n = name.chars().count();
        if n == 0 || n > Self::MAX_CHARS { Err(InvalidDisplayName) } else { Ok(Self(name)) }
    }

    /// A name made presentable rather than refused (what the REST API does with what it is
    /// sent): control and invisible characters dropped, NFKC, white space tidied, cut to 32
    /// characters. None if nothing is left.
    pub fn tidy(raw: &str) -> Option<Self> {
        use unicode_normalization::UnicodeNormalization as _;
        let visible: String = raw.chars().filter(|c| !is_invisible(*c) && !c.is_control()).collect();
        let name = visible.nfkc().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ");
        let cut: String = name.chars().take(Self::MAX_CHARS).collect();
        let cut = cut.trim_end();
        (!cut.is_empty()).then(|| Self(cut.to_owned()))
    }

    /// A new account's name when it chose none: its address's local part, cut to fit.
    pub fn from_email(email: &Email) -> Self {
        Self::default_for(email.as_str())
    }

    /// The default name for a stored address: its local part, tidied and cut to fit.
    pub fn default_for(email: &str) -> Self {
        let local = email.split('@').next().unwrap_or_default();
        Self::tidy(local).unwrap_or_else(|| Self("user".to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Why a password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPassword {
    #[error("password must be at least 8 characters")]
    TooShort,
    #[error("password must be at most 1024 characters")]
    TooLong,
}

/// A new password that meets the length rules. Never logged: no `Debug` of the value.
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    /// Bounds the work argon2 does on attacker-chosen input.
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, InvalidPassword> {
        let n = raw.chars().count();
        if n < Self::MIN_CHARS {
            Err(InvalidPassword::TooShort)
        } else if n > Self::MAX_CHARS {
            Err(InvalidPassword::TooLong)
        } else {
            Ok(Self(raw.to_owned()))
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Why a room name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("room names are 1 to 64 characters of A-Z a-z 0-9 : _ -")]
pub struct InvalidRoom;

/// A room name: 1..=64 characters of `[A-Za-z0-9:_-]`. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidRoom> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
        if ok { Ok(Self(Arc::from(raw))) } else { Err(InvalidRoom) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomName({})", &*self.0)
    }
}

/// Why message content was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidContent {
    #[error("message content must not be empty")]
    Empty,
    #[error("message is longer than {max} characters")]
    TooLong { max: usize },
}

/// Message text, trimmed, 1..=`max` characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub fn parse(raw: &str, max: usize) -> Result<Self, InvalidContent> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidContent::Empty);
        }
        // Byte length bounds the char count from above, so most messages skip the count.
        if trimmed.len() > max && trimmed.chars().count() > max {
            return Err(InvalidContent::TooLong { max });
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Why a client id or command ref was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 64 characters")]
pub struct InvalidToken64;

/// A sender-chosen idempotency key (≤ 64 chars).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(raw: &str) -> Result<Self, InvalidToken64> {
        if raw.is_empty() || raw.chars().count() > 64 { Err(InvalidToken64) } else { Ok(Self(raw.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction: an emoji (or a short code like `:tada:`), 1 to 16 visible characters without
/// white space (enough for the longest emoji sequences), so it stays one token wherever it is
/// shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction(String);

/// Characters that reorder the text around them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Why a reaction was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a reaction is 1 to 16 visible characters without spaces, such as an emoji")]
pub struct InvalidReaction;

impl Reaction {
    pub const MAX_CHARS: usize = 16;

    pub fn parse(raw: &str) -> Result<Self, InvalidReaction> {
        let s = raw.trim();
        let ok = !s.is_empty()
            && s.chars().count() <= Self::MAX_CHARS
            && !s.chars().any(|c| c.is_whitespace() || c.is_control() || is_bidi_control(c))
            // Joiners and variation selectors belong inside emoji; a reaction made only of
            // invisible characters would show as nothing.
            && s.chars().any(|c| !is_invisible(c));
        if ok { Ok(Self(s.to_owned())) } else { Err(InvalidReaction) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a search query was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidQuery {
    #[error("a search is at most {max} characters")]
    TooLong { max: usize },
}

/// A full-text search: the words of the query (runs of letters and digits, lowercased), all
/// of which a message must contain; the last one may be the start of a word, as when typing.
/// Nothing else of the query survives, so neither FTS5's nor PostgreSQL's query syntax can be
/// reached from it. A query without words finds nothing; its length bounds the number of words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    terms: Vec<String>,
}

impl SearchQuery {
    pub const MAX_LEN: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, InvalidQuery> {
        if raw.chars().count() > Self::MAX_LEN {
            return Err(InvalidQuery::TooLong { max: Self::MAX_LEN });
        }
        let mut terms: Vec<String> =
            raw.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase).collect();
        let mut seen = std::collections::HashSet::new();
        terms.retain(|t| seen.insert(t.clone()));
        Ok(Self { terms })
    }

    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// The query as an FTS5 MATCH expression: every word quoted (a phrase of one token, so no
    /// operator), the last a prefix.
    pub fn fts5(&self) -> String {
        let mut out = String::new();
        for t in &self.terms {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push('"');
            out.push_str(&t.replace('"', "\"\""));
            out.push('"');
        }
        out.push('*');
        out
    }

    /// The query as a PostgreSQL `tsquery` for `to_tsquery('simple', …)`: the words joined by
    /// `&`, the last a prefix. Words are letters and digits only, so they need no quoting.
    pub fn tsquery(&self) -> String {
        let mut out = self.terms.join(" & ");
        out.push_str(":*");
        out
    }

    /// A short piece of `content` around the first word that matches, `…` where it was cut.
    pub fn snippet(&self, content: &str, width: usize) -> String {
        let chars: Vec<char> = content.chars().collect();
        if chars.len() <= width {
            return content.to_owned();
        }
        // The char index of the first word starting with a term.
        let mut at = None;
        let mut i = 0;
        while i < chars.len() {
            if chars[i].is_alphanumeric() && (i == 0 || !chars[i - 1].is_alphanumeric()) {
                let word: String =
                    chars[i..].iter().take_while(|c| c.is_alphanumeric()).collect::<String>().to_lowercase();
                if self.terms.iter().any(|t| word.starts_with(t.as_str())) {
                    at = Some(i);
                    break;
                }
            }
            i += 1;
        }
        let start = at.map_or(0, |a| a.saturating_sub(width / 3)).min(chars.len() - width);
        let end = start + width;
        let mut out = String::new();
        if start > 0 {
            out.push('…');
        }
        out.extend(chars[start..end].iter());
        if end < chars.len() {
            out.push('…');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_short_visible_tokens() {
        for ok in ["👍", "👨‍👩‍👧‍👦", "👩🏻‍❤️‍💋‍👨🏼", "❤️", ":thumbsup:", "+1", " 🎉 "]
        {
            assert!(Reaction::parse(ok).is_ok(), "{ok:?} refused");
        }
        assert_eq!(Reaction::parse(" 🎉 ").unwrap().as_str(), "🎉");
        for bad in ["", "  ", "a b", "\u{200B}", "\u{FE0F}", "x\ny", "\u{202E}ab", &"👍".repeat(17)] {
            assert!(Reaction::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn search_queries_keep_words_only() {
        let q = SearchQuery::parse(r#"  Deploy "prod" OR NEAR(x) -- ';DROP TABLE users;* café"#).unwrap();
        assert_eq!(q.terms(), ["deploy", "prod", "or", "near", "x", "drop", "table", "users", "café"]);
        assert_eq!(q.tsquery(), "deploy & prod & or & near & x & drop & table & users & café:*");
        assert!(q.fts5().starts_with(r#""deploy" "prod" "or""#) && q.fts5().ends_with(r#""café"*"#));
        assert!(SearchQuery::parse(" -- !!! ").unwrap().terms().is_empty(), "no words: nothing to find");
        assert_eq!(SearchQuery::parse(&"a".repeat(201)), Err(InvalidQuery::TooLong { max: 200 }));
        assert_eq!(SearchQuery::parse("b a b A").unwrap().terms(), ["b", "a"], "each word once");
    }

    #[test]
    fn snippets_show_the_first_match_with_ellipses() {
        let q = SearchQuery::parse("needle").unwrap();
        let long = format!("{} Needles here {}", "x ".repeat(100), "y ".repeat(100));
        let s = q.snippet(&long, 40);
        assert!(s.starts_with('…') && s.ends_with('…') && s.contains("Needles"), "{s}");
        assert_eq!(s.chars().count(), 42);
        assert_eq!(q.snippet("short needle", 40), "short needle");
        assert_eq!(q.snippet(&"é".repeat(50), 10), format!("{}…", "é".repeat(10)), "no match: the start");
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
        for bad in ["", "alice", "@x.io", "a@b", "a@.b.c", "a@b.c.", "a b@c.d", "a@b@c.d", "a@b..c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn look_alike_emails_are_one_address_or_refused() {
        // Full-width letters and the `ﬁ` ligature are their plain forms after NFKC.
        assert_eq!(Email::parse("ａｌｉｃｅ@example.com").unwrap().as_str(), "alice@example.com");
        assert_eq!(Email::parse("\u{FB01}n@example.com").unwrap().as_str(), "fin@example.com");
        // Invisible and reordering characters are refused wherever they are.
        for c in ['\u{200B}', '\u{200D}', '\u{202E}', '\u{2066}', '\u{FEFF}', '\u{00AD}', '\u{E0041}'] {
            for bad in
                [format!("ali{c}ce@example.com"), format!("alice@exam{c}ple.com"), format!("{c}alice@example.com")]
            {
                assert!(Email::parse(&bad).is_err(), "{bad:?} accepted");
            }
        }
    }

    #[test]
    fn display_names_are_tidied_and_bounded() {
        assert_eq!(DisplayName::parse("  Alice \t Liddell ").unwrap().as_str(), "Alice Liddell");
        assert_eq!(DisplayName::parse("ＡＬ").unwrap().as_str(), "AL");
        assert_eq!(DisplayName::parse(&"é".repeat(32)).unwrap().as_str().chars().count(), 32);
        for bad in ["", "   ", "a\u{200B}b", "bell\u{7}", "\u{202E}evil", &"x".repeat(33)] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let email = Email::parse("Some.Body+tag@example.com").unwrap();
        assert_eq!(DisplayName::from_email(&email).as_str(), "some.body+tag");
        let long = Email::parse(&format!("{}@example.com", "a".repeat(60))).unwrap();
        assert_eq!(DisplayName::from_email(&long).as_str().len(), 32);
        // Tidied rather than refused: what the REST API does.
        assert_eq!(DisplayName::tidy(" z\u{200B}e\u{7}d  x ").unwrap().as_str(), "zed x");
        assert_eq!(DisplayName::tidy("\u{FDFA}").unwrap().as_str().chars().count(), 18, "NFKC expands it");
        let cut = DisplayName::tidy(&"\u{FDFA}".repeat(2)).unwrap();
        assert!((30..=32).contains(&cut.as_str().chars().count()), "then it is cut: {cut:?}");
        assert_eq!(cut.as_str(), cut.as_str().trim(), "and never ends in a space");
        assert!(DisplayName::tidy(" \u{200B}\t").is_none());
    }

    #[test]
    fn room_names_follow_the_protocol() {
        for ok in ["general", "a", "team:dev_1-x", &"r".repeat(64)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok:?} refused");
        }
        for bad in ["", "has space", "ümlaut", "semi;colon", &"r".repeat(65), "slash/"] {
            assert!(RoomName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_is_trimmed_and_bounded_in_characters() {
        assert_eq!(Content::parse("  hi \n", 10).unwrap().as_str(), "hi");
        assert_eq!(Content::parse("   ", 10), Err(InvalidContent::Empty));
        assert_eq!(Content::parse(&"é".repeat(10), 10).unwrap().as_str().chars().count(), 10);
        assert_eq!(Content::parse(&"é".repeat(11), 10), Err(InvalidContent::TooLong { max: 10 }));
    }

    #[test]
    fn passwords_have_bounds_and_hide_in_debug() {
        assert_eq!(Password::parse("short").unwrap_err(), InvalidPassword::TooShort);
        assert!(Password::parse(&"x".repeat(1025)).is_err());
        assert_eq!(format!("{:?}", Password::parse("longenough").unwrap()), "Password(***)");
    }
}
