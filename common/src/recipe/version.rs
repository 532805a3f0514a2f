//! The recipe format version: written `"1.0"` as the published schema does, or `1` / `"1"`.

use serde::{Deserialize, Deserializer, de};
use std::fmt;

/// Major version of the recipe format this build reads (any minor version of it).
pub const RECIPE_MAJOR: u32 = 1;

/// A recipe's `version`: `MAJOR` or `MAJOR.MINOR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
}

impl Version {
    /// Parses `1`, `1.0`, `1.2`; the error says what was written.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("version `{text}` is not a recipe version (write \"{RECIPE_MAJOR}.0\")");
        let (major, minor) = text.trim().split_once('.').unwrap_or((text.trim(), "0"));
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        Ok(Self {
            major: number(major).ok_or_else(bad)?,
            minor: number(minor).ok_or_else(bad)?,
        })
    }

    /// Whether this build reads recipes of this version.
    pub fn supported(&self) -> bool {
        self.major == RECIPE_MAJOR
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a version such as \"1.0\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
                let major =
                    u32::try_from(v).map_err(|_| E::custom(format!("version {v} is too large")))?;
                Ok(Version { major, minor: 0 })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Version, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("version {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Version, E> {
                // `version: 1.0` unquoted is a YAML float.
                Version::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Version, E> {
                Version::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_published_forms_and_refuses_others() {
        for (text, major, minor) in [
            ("\"1.0\"", 1, 0),
            ("1", 1, 0),
            ("\"1\"", 1, 0),
            ("1.0", 1, 0),
            ("\"2.3\"", 2, 3),
        ] {
            let v: Version = yaml_serde::from_str(text).unwrap();
            assert_eq!((v.major, v.minor), (major, minor), "{text}");
        }
        assert!(Version::parse("1.0").unwrap().supported());
        assert!(!Version::parse("2.0").unwrap().supported());
        for bad in ["\"one\"", "\"1.x\"", "-1", "\"\""] {
            let e = yaml_serde::from_str::<Version>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("version"), "{bad}: {e}");
        }
    }
}
