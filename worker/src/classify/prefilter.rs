//! A literal prefilter for the rules' message regexes: for each regex, a few strings of which
//! any match must contain one (`invalid signature|bad signature` needs `invalid signature` or
//! `bad signature`), all of them in one Aho-Corasick automaton. One scan of a message tells
//! which regexes can match it at all; a regex set none of whose regexes can is not searched.
//!
//! The strings are found in the regex's syntax tree: a run of literal characters, the
//! strings of every branch of an alternation, the sub-expression of a repetition that must
//! occur at least once. A regex where no such strings are found is always run. The answer is
//! exact, never a guess: a regex ruled out cannot match the message.
//!
//! Case-insensitive regexes match some non-ASCII letters as ASCII ones (the Kelvin sign as
//! `k`, the long s as `s`), which an ASCII case-insensitive scan does not; so only ASCII
//! messages are prefiltered, and the others take every regex.

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Class, Hir, HirKind};

/// Most strings kept for one regex; one with more is always run.
const MAX_STRINGS: usize = 256;

/// Which regexes a message may match.
#[derive(Debug, Default)]
pub struct Prefilter {
    /// Every regex's strings (`None` before the first regex with strings is added).
    automaton: Option<AhoCorasick>,
    /// For each string in the automaton, the regex it belongs to.
    owner: Vec<usize>,
    /// Regexes with no strings: always candidates.
    always: Vec<usize>,
    /// Number of regexes.
    len: usize,
}

/// The regexes a message may match: a bit per regex.
#[derive(Debug)]
pub struct Candidates(Vec<u64>);

impl Candidates {
    /// Every one of `len` regexes.
    pub fn all(len: usize) -> Self {
        Candidates(vec![u64::MAX; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether regex `i` may match.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

impl Prefilter {
    /// A prefilter over `patterns`, each as the rules compile it (case-insensitive).
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut strings = Vec::new();
        let mut owner = Vec::new();
        let mut always = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let hir = regex_syntax::ParserBuilder::new()
                .case_insensitive(true)
                .build()
                .parse(p)
                .map_err(|e| format!("message regex {}: {e}", i + 1))?;
            match required(&hir).filter(|s| s.len() <= MAX_STRINGS) {
                Some(set) => {
                    for s in set {
                        strings.push(s);
                        owner.push(i);
                    }
                }
                None => always.push(i),
            }
        }
        let automaton = if strings.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(&strings)
                    .map_err(|e| format!("the message regexes' literal prefilter: {e}"))?,
            )
        };
        Ok(Prefilter {
            automaton,
            owner,
            always,
            len: patterns.len(),
        })
    }

    /// How many regexes are always run (no strings found in them).
    #[cfg(test)]
    pub fn always_run(&self) -> usize {
        self.always.len()
    }

    /// The regexes `message` may match (every one for a message that is not ASCII).
    pub fn candidates(&self, message: &str) -> Candidates {
        let Some(automaton) = &self.automaton else {
            return Candidates::all(self.len);
        };
        if !message.is_ascii() {
            return Candidates::all(self.len);
        }
        let mut out = Candidates(vec![0; self.len.div_ceil(64)]);
        for &i in &self.always {
            out.set(i);
        }
        for m in automaton.find_overlapping_iter(message) {
            out.set(self.owner[m.pattern().as_usize()]);
        }
        out
    }
}

/// Strings (lowercase where letters) one of which occurs, ASCII case aside, in every match of
/// `hir`; `None` when no such strings were found (the regex can match without any).
fn required(hir: &Hir) -> Option<Vec<String>> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => None,
        HirKind::Literal(_) | HirKind::Class(_) => {
            let mut run = String::new();
            literal(hir, &mut run).then_some(vec![run])
        }
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => required(&r.sub),
        HirKind::Repetition(_) => None,
        HirKind::Alternation(branches) => {
            let mut out = Vec::new();
            for b in branches {
                out.extend(required(b)?);
                if out.len() > MAX_STRINGS {
                    return None;
                }
            }
            out.sort();
            out.dedup();
            Some(out)
        }
        HirKind::Concat(parts) => {
            // Runs of literal characters (zero-width assertions do not break a run), and the
            // strings of each other part: the best of those.
            let mut best: Option<Vec<String>> = None;
            let mut keep = |set: Vec<String>| {
                if best.as_ref().is_none_or(|b| better(&set, b)) {
                    best = Some(set);
                }
            };
            let mut run = String::new();
            for part in parts {
                if matches!(part.kind(), HirKind::Look(_)) || literal(part, &mut run) {
                    continue;
                }
                if !run.is_empty() {
                    keep(vec![std::mem::take(&mut run)]);
                }
                if let Some(set) = required(part) {
                    keep(set);
                }
            }
            if !run.is_empty() {
                keep(vec![run]);
            }
            best
        }
    }
}

/// Whether set `a` rules out more messages than `b`: its shortest string is longer, or as
/// long with fewer strings.
fn better(a: &[String], b: &[String]) -> bool {
    let shortest = |s: &[String]| s.iter().map(String::len).min().unwrap_or(0);
    (shortest(a), std::cmp::Reverse(a.len())) > (shortest(b), std::cmp::Reverse(b.len()))
}

/// Appends `hir` to `run` if it is one literal character or string (a case-insensitive
/// letter's class counts as the letter); `false`, leaving `run` as it was, otherwise.
fn literal(hir: &Hir, run: &mut String) -> bool {
    match hir.kind() {
        HirKind::Literal(l) => match std::str::from_utf8(&l.0) {
            Ok(s) if s.is_ascii() => {
                run.push_str(&s.to_ascii_lowercase());
                true
            }
            _ => false,
        },
        HirKind::Class(Class::Unicode(c)) => {
            let mut letter = None;
            for r in c.ranges() {
                if (r.end() as u32) - (r.start() as u32) > 3 {
                    return false;
                }
                for ch in r.start()..=r.end() {
                    let folded = match ch {
                        '\u{212A}' => 'k',
                        '\u{17F}' => 's',
                        c if c.is_ascii() => c.to_ascii_lowercase(),
                        _ => return false,
                    };
                    if *letter.get_or_insert(folded) != folded {
                        return false;
                    }
                }
            }
            letter.map(|l| run.push(l)).is_some()
        }
        HirKind::Class(Class::Bytes(c)) => {
            let mut letter = None;
            for r in c.ranges() {
                if r.end() - r.start() > 3 {
                    return false;
                }
                for b in r.start()..=r.end() {
                    if !b.is_ascii()
                        || *letter.get_or_insert(b.to_ascii_lowercase()) != b.to_ascii_lowercase()
                    {
                        return false;
                    }
                }
            }
            letter.map(|l| run.push(char::from(l))).is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(p: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new()
            .case_insensitive(true)
            .build()
            .parse(p)
            .unwrap();
        required(&hir)
    }

    #[test]
    fn finds_literal_runs_branches_and_repeated_parts() {
        assert_eq!(strings("Bad Signature"), Some(vec!["bad signature".into()]));
        assert_eq!(
            strings("invalid signature|\\bBADSIG\\b"),
            Some(vec!["badsig".into(), "invalid signature".into()])
        );
        // The part of a concatenation with the longest shortest string.
        assert_eq!(
            strings("quota[^\\n]{0,80}per (minute|second)"),
            Some(vec!["minute".into(), "second".into()])
        );
        assert_eq!(
            strings("(?-u:\\b)ENOSPC(?-u:\\b)"),
            Some(vec!["enospc".into()])
        );
        assert_eq!(strings("x(abc)+"), Some(vec!["abc".into()]));
    }

    #[test]
    fn finds_nothing_where_a_match_needs_no_literal() {
        assert_eq!(strings("[0-9]+ in use"), Some(vec![" in use".into()]));
        assert_eq!(strings("foo|[0-9]+"), None);
        assert_eq!(strings("(abc)?"), None);
        assert_eq!(strings("\\w+"), None);
    }

    fn prefilter(patterns: &[&str]) -> Prefilter {
        Prefilter::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn rules_out_only_regexes_that_cannot_match() {
        let p = prefilter(&["disk full", "[0-9]+", "bad (gateway|request)"]);
        assert_eq!(p.always_run(), 1);
        let c = p.candidates("HTTP 502 BAD GATEWAY");
        assert!(!c.contains(0) && c.contains(1) && c.contains(2));
        let c = p.candidates("the disk Full again");
        assert!(c.contains(0) && c.contains(1) && !c.contains(2));
    }

    #[test]
    fn a_message_that_is_not_ascii_takes_every_regex() {
        // `(?i)k` matches the Kelvin sign, which an ASCII scan would miss.
        let p = prefilter(&["kill"]);
        let kelvin = "\u{212A}ill";
        assert!(
            regex::RegexBuilder::new("kill")
                .case_insensitive(true)
                .build()
                .unwrap()
                .is_match(kelvin)
        );
        assert!(p.candidates(kelvin).contains(0));
        assert!(!p.candidates("fill").contains(0));
    }
}
