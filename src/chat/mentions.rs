//! Mentions: whom a message names with `@`.

use uuid::Uuid;

use crate::domain::Mentions;

/// Members a mention is looked for among (the oldest this many); also the most one message
/// mentions.
pub(super) const MENTION_CANDIDATES: u32 = 1000;

/// Whom `content` mentions: for each `@` that starts a word, the longest of `members`' names
/// (any case) that follows it as whole words; `@room` / `@here` mean everyone when
/// `may_mention_all`. Each member once.
pub fn resolve_mentions(content: &str, members: &[(Uuid, &str)], may_mention_all: bool) -> Mentions {
    let text: Vec<char> = content.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let starts_with = |at: usize, name: &str| -> Option<usize> {
        let mut i = at;
        for n in name.chars() {
            let c = *text.get(i)?;
            if !c.to_lowercase().eq(n.to_lowercase()) {
                return None;
            }
            i += 1;
        }
        (i > at && text.get(i).is_none_or(|c| !word(*c))).then_some(i - at)
    };
    let mut out = Mentions::default();
    for (i, c) in text.iter().enumerate() {
        if *c != '@' || (i > 0 && word(text[i - 1])) {
            continue;
        }
        if may_mention_all && (starts_with(i + 1, "room").is_some() || starts_with(i + 1, "here").is_some()) {
            out.all = true;
            continue;
        }
        let best = members
            .iter()
            .filter_map(|(id, name)| starts_with(i + 1, name).map(|len| (len, *id)))
            .max_by_key(|(len, _)| *len);
        if let Some((_, id)) = best
            && !out.users.contains(&id)
        {
            out.users.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_members_named_after_an_at_sign_longest_name_first() {
        let (ann, ann_lee, bob) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let members = [(ann, "Ann"), (ann_lee, "Ann Lee"), (bob, "bob")];
        let m = resolve_mentions("hi @ann lee and @BOB, @bob again; mail x@bob.com, @bobby, @Ann.", &members, false);
        assert_eq!(m.users, [ann_lee, bob, ann]);
        assert!(!m.all);
        assert!(resolve_mentions("@room look", &members, false).is_empty(), "only moderators reach everyone");
        let all = resolve_mentions("@here look", &members, true);
        assert!(all.all && all.users.is_empty());
        assert_eq!(all.to_db().as_deref(), Some("all"));
        let back = Mentions::try_from(m.to_db()).unwrap();
        assert_eq!(back, m);
        assert_eq!(Mentions::try_from(None).unwrap(), Mentions::default());
    }
}
