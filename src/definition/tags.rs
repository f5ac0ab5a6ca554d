//! Stream tags in Firehose's `Tag` shape, with its limits: at most 50 per stream, keys of 1-128
//! and values of 0-256 characters drawn from letters, digits, white space and `_ . : / = + - @ %`,
//! no key starting with `aws:`.

use serde::{Deserialize, Serialize};

pub const MAX_TAGS: usize = 50;
pub const MAX_KEY_CHARS: usize = 128;
pub const MAX_VALUE_CHARS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Firehose's pattern, `[\p{L}\p{Z}\p{N}_.:/=+\-@%]`: letters, separators (white space that is
/// not a control character), numbers, and seven punctuation marks.
fn allowed(c: char) -> bool {
    c.is_alphabetic()
        || c.is_numeric()
        || (c.is_whitespace() && !c.is_control())
        || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@' | '%')
}

/// What is wrong with a tag key, if anything; `at` names it in the message (`Tags[2].Key`).
pub fn check_key(key: &str, at: &str) -> Result<(), String> {
    let chars = key.chars().count();
    if !(1..=MAX_KEY_CHARS).contains(&chars) {
        return Err(format!(
            "{at} must be 1 to {MAX_KEY_CHARS} characters long, got {chars}"
        ));
    }
    if key.starts_with("aws:") {
        return Err(format!(
            "{at} cannot start with \"aws:\", a prefix reserved for AWS"
        ));
    }
    if let Some(c) = key.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "{at} may only contain letters, digits, white space and _ . : / = + - @ %, found {c:?}"
        ));
    }
    Ok(())
}

fn check_tag(tag: &Tag, at: &str) -> Result<(), String> {
    check_key(&tag.key, &format!("{at}.Key"))?;
    if let Some(value) = &tag.value {
        let chars = value.chars().count();
        if chars > MAX_VALUE_CHARS {
            return Err(format!(
                "{at}.Value must be at most {MAX_VALUE_CHARS} characters long, got {chars}"
            ));
        }
        if let Some(c) = value.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "{at}.Value may only contain letters, digits, white space and _ . : / = + - @ %, found {c:?}"
            ));
        }
    }
    Ok(())
}

/// Checks a list of tags as one request gives them: 1-50 (or 0-50 where `may_be_empty`), each
/// valid, no key twice.
pub fn check_list(tags: &[Tag], may_be_empty: bool) -> Result<(), String> {
    let least = if may_be_empty { 0 } else { 1 };
    if tags.len() > MAX_TAGS || tags.len() < least {
        return Err(format!(
            "Tags must list {least} to {MAX_TAGS} tags, got {}",
            tags.len()
        ));
    }
    for (i, tag) in tags.iter().enumerate() {
        check_tag(tag, &format!("Tags[{i}]"))?;
        if tags[..i].iter().any(|t| t.key == tag.key) {
            return Err(format!("Tags[{i}].Key {:?} is given twice", tag.key));
        }
    }
    Ok(())
}

/// Adds `new` to `tags` (a key already there gets the new value), keeping them sorted by key.
/// Refuses, leaving `tags` as they were, if the stream would have more than 50.
pub fn merge(tags: &[Tag], new: Vec<Tag>) -> Result<Vec<Tag>, String> {
    let mut merged = tags.to_vec();
    for tag in new {
        match merged.iter_mut().find(|t| t.key == tag.key) {
            Some(existing) => existing.value = tag.value,
            None => merged.push(tag),
        }
    }
    if merged.len() > MAX_TAGS {
        return Err(format!(
            "a delivery stream can have at most {MAX_TAGS} tags; this would give it {}",
            merged.len()
        ));
    }
    merged.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: Option<&str>) -> Tag {
        Tag {
            key: k.into(),
            value: v.map(Into::into),
        }
    }

    #[test]
    fn keys_and_values_at_their_limits() {
        let key = "k".repeat(MAX_KEY_CHARS);
        let value = "é".repeat(MAX_VALUE_CHARS);
        assert_eq!(check_list(&[tag(&key, Some(&value))], false), Ok(()));
        let long_key = "k".repeat(MAX_KEY_CHARS + 1);
        assert!(
            check_list(&[tag(&long_key, None)], false)
                .unwrap_err()
                .contains("1 to 128")
        );
        let long_value = "v".repeat(MAX_VALUE_CHARS + 1);
        assert!(
            check_list(&[tag("k", Some(&long_value))], false)
                .unwrap_err()
                .contains("at most 256")
        );
        assert!(check_list(&[tag("", None)], false).is_err());
        assert_eq!(check_list(&[tag("k", Some(""))], false), Ok(()));
        assert!(
            check_list(&[tag("aws:owner", None)], false)
                .unwrap_err()
                .contains("aws:")
        );
        assert_eq!(check_list(&[tag("AWS:owner", None)], false), Ok(()));
        assert_eq!(
            check_list(&[tag("team name_.:/=+-@%9", Some("Spiele 東京"))], false),
            Ok(())
        );
        assert!(check_list(&[tag("a\tb", None)], false).is_err());
        assert!(check_list(&[tag("a", Some("x#y"))], false).is_err());
        assert!(
            check_list(&[tag("a", None), tag("a", None)], false)
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn fifty_tags_and_no_more() {
        let fifty: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i:02}"), None)).collect();
        assert_eq!(check_list(&fifty, false), Ok(()));
        let mut fifty_one = fifty.clone();
        fifty_one.push(tag("extra", None));
        assert!(check_list(&fifty_one, false).is_err());
        assert!(check_list(&[], false).is_err());
        assert_eq!(check_list(&[], true), Ok(()));

        let merged = merge(&fifty, vec![tag("k07", Some("new"))]).unwrap();
        assert_eq!(merged.len(), 50);
        assert_eq!(merged[7].value.as_deref(), Some("new"));
        assert!(merge(&fifty, vec![tag("k50", None)]).is_err());
        let sorted = merge(&[tag("b", None)], vec![tag("a", None)]).unwrap();
        assert_eq!(sorted[0].key, "a");
    }
}
