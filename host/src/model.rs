//! Domain newtypes whose rules must not be forgotten.

use std::fmt;

/// A tenant slug: `^[a-z0-9][a-z0-9-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Parses a slug, saying what is allowed when it is not one.
    pub fn parse(slug: &str) -> Result<TenantId, String> {
        let ok = !slug.is_empty()
            && slug.len() <= 63
            && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(TenantId(slug.to_owned()))
        } else {
            let shown: String = slug.chars().take(80).collect();
            Err(format!(
                "tenant {shown:?} is invalid: use 1-63 of a-z 0-9 - starting with a letter or digit"
            ))
        }
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::TenantId;

    #[test]
    fn tenant_slugs_follow_the_rule() {
        for good in ["acme", "a", "0day", "acme-labs", &"a".repeat(63)] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-acme",
            "Acme",
            "ac me",
            "acme_labs",
            "_system",
            &"a".repeat(64),
            "acme/../x",
        ] {
            let err = TenantId::parse(bad).unwrap_err();
            assert!(err.contains("a-z 0-9 -"), "{err}");
        }
    }
}
