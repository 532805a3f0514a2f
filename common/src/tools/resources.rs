//! `res://NAME:TAG` references (wordlists, template sets) resolved to paths under one directory.

use std::path::PathBuf;

/// A parsed `res://NAME:TAG` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    /// Path words of the name (`wordlists/dirb` → `["wordlists", "dirb"]`).
    pub name: Vec<String>,
    /// The tag (`latest`).
    pub tag: String,
}

impl ResourceRef {
    /// Parses `res://NAME:TAG`: NAME is path words separated by `/`, each of
    /// `[A-Za-z0-9._-]` and neither `.` nor `..`; TAG is one such word.
    pub fn parse(reference: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "`{reference}` is not a resource reference like res://wordlists/common:latest ({why})"
            )
        };
        let body = reference
            .strip_prefix("res://")
            .ok_or_else(|| bad("it must start with res://"))?;
        let (name, tag) = body
            .rsplit_once(':')
            .ok_or_else(|| bad("the :TAG is missing"))?;
        let name: Vec<String> = name.split('/').map(str::to_string).collect();
        if name.iter().any(|w| !valid_word(w)) {
            return Err(bad(
                "the name must be words of letters, digits, `.`, `_`, `-` separated by `/`, without `..`",
            ));
        }
        if !valid_word(tag) {
            return Err(bad(
                "the tag must be letters, digits, `.`, `_`, `-`, not `..`",
            ));
        }
        Ok(Self {
            name,
            tag: tag.to_string(),
        })
    }
}

fn valid_word(word: &str) -> bool {
    !word.is_empty()
        && word != "."
        && word != ".."
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where resources live: `res://wordlists/dirb:latest` is `DIR/wordlists/dirb/latest` (a file
/// or a directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    dir: Option<PathBuf>,
}

impl Resources {
    /// Resources under `dir`; `None` = no resource directory configured.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The configured directory.
    pub fn dir(&self) -> Option<&PathBuf> {
        self.dir.as_ref()
    }

    /// The path `reference` names; an error says the reference, the directory and the path
    /// looked for.
    pub fn resolve(&self, reference: &str) -> Result<PathBuf, String> {
        let parsed = ResourceRef::parse(reference)?;
        let Some(dir) = &self.dir else {
            return Err(format!(
                "resource {reference} cannot be resolved: no resource directory is configured"
            ));
        };
        let mut path = dir.clone();
        path.extend(&parsed.name);
        path.push(&parsed.tag);
        if path.exists() {
            Ok(path)
        } else {
            Err(format!(
                "resource {reference} not found: looked for {} in the resource directory {}",
                path.display(),
                dir.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_parsed_strictly() {
        let r = ResourceRef::parse("res://wordlists/dirb:latest").unwrap();
        assert_eq!(r.name, vec!["wordlists", "dirb"]);
        assert_eq!(r.tag, "latest");
        for bad in [
            "wordlists/dirb:latest",
            "res://wordlists/dirb",
            "res://../etc:passwd",
            "res://a//b:1",
            "res://a/b:..",
            "res://a b:1",
            "res://:1",
            "res:///abs:1",
        ] {
            assert!(ResourceRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolution_names_the_reference_directory_and_path() {
        let e = Resources::new(None).resolve("res://w/x:1").unwrap_err();
        assert!(e.contains("res://w/x:1") && e.contains("no resource directory"));
        let dir = std::env::temp_dir().join(format!("secflow-res-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("w/x")).unwrap();
        std::fs::write(dir.join("w/x/1"), "admin\n").unwrap();
        let res = Resources::new(Some(dir.clone()));
        assert_eq!(res.resolve("res://w/x:1").unwrap(), dir.join("w/x/1"));
        let e = res.resolve("res://w/x:2").unwrap_err();
        assert!(e.contains("res://w/x:2") && e.contains(&dir.join("w/x/2").display().to_string()));
        assert!(e.contains(&dir.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
