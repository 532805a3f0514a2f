//! Classification rules as written in YAML, and their compiled form: a few [`RegexSet`]s over
//! every rule's message regex, so that a message is scanned a few times for all of them, and a
//! literal prefilter that tells which regexes a message may match at all, so that a set none
//! of whose regexes can match is not scanned.

use super::prefilter::{Candidates, Prefilter};
use regex::{RegexBuilder, RegexSet, RegexSetBuilder, SetMatches};
use secflow_common::ErrorClass;
use serde::Deserialize;

/// A rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Format version (1).
    pub version: u32,
    /// Rules in the order they are tried.
    pub rules: Vec<RuleSpec>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Name reported as the matched rule.
    pub name: String,
    /// Class it assigns.
    pub class: ErrorClass,
    /// Code it assigns (defaults to the name).
    #[serde(default)]
    pub code: Option<String>,
    /// Regex on the message (case-insensitive).
    #[serde(default)]
    pub message: Option<String>,
    /// Process exit codes.
    #[serde(default)]
    pub exit_codes: Vec<i32>,
    /// Signals that killed the process.
    #[serde(default)]
    pub signals: Vec<i32>,
    /// HTTP statuses: numbers or "500-599" ranges.
    #[serde(default)]
    pub http_status: Vec<StatusSpec>,
    /// `std::io::ErrorKind` names.
    #[serde(default)]
    pub io_kinds: Vec<String>,
    /// A confident model may not overrule it: its conditions name the cause outright (the
    /// shell's exit 127 is "command not found"). An operator's rules always stand anyway.
    #[serde(default)]
    pub firm: bool,
}

/// An HTTP status or a range of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// One status.
    One(u16),
    /// `"500-599"`.
    Range(String),
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub(super) name: String,
    pub(super) class: ErrorClass,
    pub(super) code: String,
    /// The rule's message regex as written (`None`: any message).
    pub(super) message: Option<String>,
    pub(super) exit_codes: Vec<i32>,
    pub(super) signals: Vec<i32>,
    pub(super) http_status: Vec<(u16, u16)>,
    pub(super) io_kinds: Vec<String>,
    /// A built-in rule (not one of an operator's `--rules` file).
    pub(super) built_in: bool,
    /// Never overruled by the model.
    pub(super) firm: bool,
}

impl Rule {
    /// Whether a confident model may overrule this rule: a built-in rule that does not answer
    /// `security` and is not firm (an operator's rules, firm rules and security answers always
    /// stand).
    pub(super) fn yields_to_model(&self) -> bool {
        self.built_in && !self.firm && self.class != ErrorClass::Security
    }
}

/// `pattern` with its word boundaries (`\\b`, `\\B`) made ASCII (`(?-u:\\b)`): a Unicode word
/// boundary stops the regex set's fast automaton at the first non-ASCII character of a message
/// (a typographic quote is enough), and the slow fallback over every rule took milliseconds.
/// Error messages name their words in ASCII, so the rules lose nothing.
pub fn ascii_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(b @ ('b' | 'B')) => {
                out.push_str("(?-u:\\");
                out.push(b);
                out.push(')');
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Compiles a rules file; errors name the source and the rule.
pub fn compile(source: &str, text: &str) -> Result<Vec<Rule>, String> {
    let file: RuleFile =
        yaml_serde::from_str(text).map_err(|e| format!("{source}: not a valid rules file: {e}"))?;
    if file.version != 1 {
        return Err(format!(
            "{source}: unsupported rules version {} (expected 1)",
            file.version
        ));
    }
    file.rules
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let at = format!("{source}: rule {} (`{}`)", i + 1, spec.name);
            if let Some(m) = &spec.message {
                RegexBuilder::new(&ascii_boundaries(m))
                    .case_insensitive(true)
                    .size_limit(1 << 22)
                    .build()
                    .map_err(|e| format!("{at}: invalid message regex: {e}"))?;
            }
            let message = spec.message;
            let http_status = spec.http_status.iter().map(|s| parse_status(s).map_err(|e| format!("{at}: {e}"))).collect::<Result<_, _>>()?;
            let conditions = message.is_some() || !spec.exit_codes.is_empty() || !spec.signals.is_empty() || !spec.io_kinds.is_empty() || !spec.http_status.is_empty();
            if !conditions {
                return Err(format!("{at}: a rule needs at least one condition (message, exit_codes, signals, http_status, io_kinds)"));
            }
            Ok(Rule {
                code: spec.code.unwrap_or_else(|| spec.name.clone()),
                name: spec.name,
                class: spec.class,
                message,
                exit_codes: spec.exit_codes,
                signals: spec.signals,
                http_status,
                io_kinds: spec.io_kinds,
                built_in: true,
                firm: spec.firm,
            })
        })
        .collect()
}

fn parse_status(spec: &StatusSpec) -> Result<(u16, u16), String> {
    match spec {
        StatusSpec::One(s) => Ok((*s, *s)),
        StatusSpec::Range(r) => {
            let bad = || format!("http_status `{r}` is not a status or a range like 500-599");
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let (a, b) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a > b { Err(bad()) } else { Ok((a, b)) }
        }
    }
}

/// Message regexes per regex set. A set reports every pattern that matches (an overlapping
/// search), so its lazy DFA's states are combinations of all its patterns' NFA states; with
/// many case-insensitive alternations in one set the DFA keeps outgrowing its cache and spends
/// its time building states again. At 30 patterns a set (the 61 built-in message regexes in
/// three sets) that was 75 % of the time, p50 69 µs and p99 1.3 ms a message over the training
/// corpora (`cargo bench -p secflow-worker --bench classify`); at 10 (seven sets, seven passes)
/// rules alone take p50 9 µs, p99 44 µs.
const PATTERNS_PER_SET: usize = 10;

/// Ordered rules, their message regexes and what finds them quickly.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// The rules, in the order they are tried.
    pub(super) rules: Vec<Rule>,
    /// Which message regexes an ASCII message may match.
    prefilter: Prefilter,
    /// Every message regex, in rule order, [`PATTERNS_PER_SET`] to a set.
    sets: Vec<RegexSet>,
    /// For each rule, the index of its message regex.
    slot: Vec<Option<usize>>,
}

impl RuleSet {
    /// Builds the sets over `rules` (each regex already checked by [`compile`]).
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, String> {
        let mut slot = Vec::with_capacity(rules.len());
        let mut patterns = Vec::new();
        for r in &rules {
            slot.push(r.message.as_ref().map(|m| {
                patterns.push(ascii_boundaries(m));
                patterns.len() - 1
            }));
        }
        let sets = patterns
            .chunks(PATTERNS_PER_SET)
            .map(|chunk| {
                RegexSetBuilder::new(chunk)
                    .case_insensitive(true)
                    .size_limit(1 << 25)
                    .dfa_size_limit(1 << 24)
                    .build()
                    .map_err(|e| format!("the message regexes do not build together: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let prefilter = Prefilter::new(&patterns)?;
        Ok(RuleSet {
            rules,
            prefilter,
            sets,
            slot,
        })
    }

    /// The first rule whose every condition holds for `message` and the fields `other` checks.
    ///
    /// A rule's other conditions are checked before its message regex, and a set is searched
    /// only when a rule that needs it is reached and the prefilter has not ruled that rule's
    /// regex out: a message an early rule takes is not scanned by the later sets, and one that
    /// no rule takes is scanned only by the sets holding regexes whose strings it contains.
    /// Searching each candidate regex on its own instead of its set was slower (p99 63 µs
    /// instead of 36 in one build of `cargo bench -p secflow-worker --bench classify`): more
    /// automata, colder caches.
    pub fn first(&self, message: &str, other: impl Fn(&Rule) -> bool) -> Option<&Rule> {
        self.first_among(message, &self.prefilter.candidates(message), other)
    }

    /// [`RuleSet::first`], the regexes not in `candidates` taken not to match.
    fn first_among(
        &self,
        message: &str,
        candidates: &Candidates,
        other: impl Fn(&Rule) -> bool,
    ) -> Option<&Rule> {
        let mut hits: Vec<Option<SetMatches>> = vec![None; self.sets.len()];
        self.rules
            .iter()
            .zip(&self.slot)
            .find(|(r, slot)| {
                other(r)
                    && slot.is_none_or(|i| {
                        let set = i / PATTERNS_PER_SET;
                        candidates.contains(i)
                            && hits[set]
                                .get_or_insert_with(|| self.sets[set].matches(message))
                                .matched(i % PATTERNS_PER_SET)
                    })
            })
            .map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built_in() -> RuleSet {
        compile("built-in rules", super::super::DEFAULT_RULES)
            .and_then(RuleSet::new)
            .unwrap()
    }

    /// Over every message of the corpus (training and held-out files), the prefilter never
    /// rules out a regex that matches, and the rule found with it is the one the sets find.
    #[test]
    fn the_prefilter_rules_out_no_regex_that_matches_a_corpus_message() {
        let set = built_in();
        assert!(
            set.prefilter.always_run() * 10 < set.slot.iter().flatten().count(),
            "{} of {} regexes have no literal strings",
            set.prefilter.always_run(),
            set.slot.iter().flatten().count()
        );
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/corpus");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        let n = set.slot.iter().flatten().count();
        let (mut messages, mut run) = (0, 0);
        for path in files {
            for e in super::super::train::load_examples(path.to_str().unwrap()).unwrap() {
                let m = &e.message;
                let candidates = set.prefilter.candidates(m);
                for (s, regex_set) in set.sets.iter().enumerate() {
                    for j in regex_set.matches(m).iter() {
                        let i = s * PATTERNS_PER_SET + j;
                        assert!(
                            candidates.contains(i),
                            "regex {i} matches but was ruled out: {m}"
                        );
                    }
                }
                let name = |r: Option<&Rule>| r.map(|r| r.name.clone());
                assert_eq!(
                    name(set.first(m, |_| true)),
                    name(set.first_among(m, &Candidates::all(n), |_| true)),
                    "{m}"
                );
                messages += 1;
                run += (0..set.slot.iter().flatten().count())
                    .filter(|&i| candidates.contains(i))
                    .count();
            }
        }
        assert!(messages > 10_000, "only {messages} corpus messages read");
        // The point of it: most regexes are never run for a message.
        assert!(
            run * 4 < messages * set.slot.iter().flatten().count(),
            "{run} regex runs for {messages} messages of {} regexes",
            set.slot.iter().flatten().count()
        );
    }
}
