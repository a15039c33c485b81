//! How configuration values are written: secrets that never show in logs, durations like `15m`,
//! and lists that may come as one comma-separated environment variable.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must not appear in logs or in `confab config` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call sites that use it are easy to find by this name.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment values that look like numbers arrive as numbers; a secret of digits is
        // still a string.
        Ok(Self(StringOrNumber::deserialize(d)?.0))
    }
}

struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
            I(i64),
            F(f64),
        }
        Ok(Self(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::U(n) => n.to_string(),
            Raw::I(n) => n.to_string(),
            Raw::F(n) => n.to_string(),
        }))
    }
}

/// A duration written the human way (`"15m"`, `"30s"`, `"7d"`) or as whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    /// `"7d"`, `"12h"`, or whole seconds (for command-line flags).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if let Ok(secs) = raw.trim().parse::<u64>() {
            return Ok(Self(Duration::from_secs(secs)));
        }
        humantime::parse_duration(raw.trim()).map(Self).map_err(|e| format!("`{raw}` is not a duration like 7d ({e})"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = StringOrNumber::deserialize(d)?.0;
        if let Ok(secs) = raw.parse::<u64>() {
            return Ok(Self(Duration::from_secs(secs)));
        }
        humantime::parse_duration(raw.trim())
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("`{raw}` is not a duration like 15m or 30s ({e})")))
    }
}

/// A list written as a TOML array or as one comma-separated string (how env vars carry lists).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let items = match Raw::deserialize(d)? {
            Raw::One(s) => s.split(',').map(str::to_owned).collect(),
            Raw::Many(v) => v,
        };
        Ok(Self(items.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_humane_and_numeric_forms() {
        let d: HumanDuration = serde_json::from_str("\"15m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(900));
        let d: HumanDuration = serde_json::from_str("90").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        assert!(serde_json::from_str::<HumanDuration>("\"soon\"").is_err());
    }

    #[test]
    fn lists_accept_comma_separated_strings() {
        let l: List = serde_json::from_str("\"http://a.test, http://b.test\"").unwrap();
        assert_eq!(l.0, vec!["http://a.test", "http://b.test"]);
    }
}
