//! Feature extraction for the learned classifier: a failure's message is normalised (numbers,
//! hex, ids, IPs, URLs and paths become placeholders), split into lowercase words (camelCase and
//! snake_case split too), and turned into hashed features: word unigrams and bigrams, character
//! 3–5-grams within words, and the structural fields (`exit=137`, `http=5xx`, `io=timed_out`).
//! Each feature group is scaled to unit length so that no group drowns the others.

use super::Failure;

/// Longest message part looked at: the head and the tail of longer messages (the tail of a
/// stderr is where tools say what went wrong).
const HEAD_TAIL_BYTES: usize = 1024;
/// Words longer than this contribute their first bytes only to the character n-grams.
const MAX_NGRAM_WORD: usize = 40;
/// At most this many character n-grams per message (more than any training message has; words
/// and bigrams are not capped): bounds the work on long messages.
const MAX_CHAR_GRAMS: usize = 4096;

/// Feature groups, each scaled to unit length: words, bigrams, character n-grams, structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Group {
    /// A word (or placeholder).
    Word = 0,
    /// Two consecutive words.
    Bigram = 1,
    /// 3 to 5 consecutive characters of a word, `<` and `>` marking its ends.
    Chars = 2,
    /// Exit code, signal, HTTP status, io error kind.
    Structure = 3,
}

const GROUP_WEIGHT: [f32; 4] = [1.0, 0.7, 1.2, 0.5];
const GROUP_NAME: [&str; 4] = ["word", "bigram", "chars", "field"];

/// The hashed features of one failure: bucket and value, with the readable name of each when
/// asked for (explanations).
#[derive(Debug, Default)]
pub struct Features {
    /// `(bucket, value)` pairs; a bucket may repeat.
    pub entries: Vec<(u32, f32)>,
    /// The name of each entry (only when extracted with names).
    pub names: Vec<String>,
    /// Whether the message held at least one word (else only the fields speak).
    pub has_text: bool,
}

/// FNV-1a, 64 bits: a hash that is fixed forever, so model files stay valid.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new(group: Group) -> Self {
        Fnv(0xcbf2_9ce4_8422_2325).bytes(&[group as u8])
    }
    fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    fn bucket(self, mask: u32) -> u32 {
        // Fold the high half in: FNV's low bits alone mix poorly.
        ((self.0 ^ (self.0 >> 29) ^ (self.0 >> 47)) as u32) & mask
    }
}

/// A hash of `bytes` that never changes (FNV-1a): for splits that must stay put.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    Fnv(0xcbf2_9ce4_8422_2325).bytes(bytes).0
}

/// Where extracted features go: a list of entries with their names (training, explanations,
/// [`extract`]) or running sums per class (inference, the model's scorer).
pub(super) trait Sink {
    /// One feature of group `g` in `bucket`; `name` is asked for only by sinks that keep names.
    fn feature(&mut self, g: Group, bucket: u32, name: impl FnOnce() -> String);
}

/// Walks the features of `f` (hashed into `mask + 1` buckets) into `sink`, in one pass over
/// the words: each word, the bigram it ends, its character n-grams (until the message's cap),
/// then the structural fields. Returns whether the message held a word.
pub(super) fn walk(f: &Failure, mask: u32, sink: &mut impl Sink) -> bool {
    let mut prev = String::new();
    let mut char_grams = 0;
    let mut any = false;
    Words::default().each(&clip(&f.message), |w| {
        sink.feature(
            Group::Word,
            Fnv::new(Group::Word).bytes(w.as_bytes()).bucket(mask),
            || w.to_string(),
        );
        if any {
            let h = Fnv::new(Group::Bigram)
                .bytes(prev.as_bytes())
                .bytes(b" ")
                .bytes(w.as_bytes());
            sink.feature(Group::Bigram, h.bucket(mask), || format!("{prev} {w}"));
        }
        if !w.starts_with('<') && char_grams < MAX_CHAR_GRAMS {
            char_grams += char_ngrams(w, MAX_CHAR_GRAMS - char_grams, mask, sink);
        }
        any = true;
        prev.clear();
        prev.push_str(w);
    });
    for field in fields(f) {
        let bucket = Fnv::new(Group::Structure)
            .bytes(field.as_bytes())
            .bucket(mask);
        sink.feature(Group::Structure, bucket, || field.clone());
    }
    any
}

/// Extracts the features of `f` into `mask + 1` buckets, group by group (words, bigrams,
/// character n-grams, fields), each group scaled to its weight; `named` also records their
/// names.
pub fn extract(f: &Failure, mask: u32, named: bool) -> Features {
    let mut groups = Groups {
        named,
        ..Groups::default()
    };
    let has_text = walk(f, mask, &mut groups);
    let mut feats = Features {
        entries: Vec::with_capacity(groups.entries.iter().map(Vec::len).sum()),
        names: Vec::new(),
        has_text,
    };
    for (g, (entries, names)) in groups.entries.into_iter().zip(groups.names).enumerate() {
        if !entries.is_empty() {
            let scale = group_scale(g, entries.len());
            feats
                .entries
                .extend(entries.into_iter().map(|b| (b, scale)));
            feats.names.extend(names);
        }
    }
    feats
}

/// The value of each feature of group `g` when the group holds `n` of them: the group's weight
/// spread so that the group has unit length times its weight.
pub(super) fn group_scale(g: usize, n: usize) -> f32 {
    GROUP_WEIGHT[g] / (n as f32).sqrt()
}

/// Features gathered per group (buckets, and names when asked for).
#[derive(Default)]
struct Groups {
    named: bool,
    entries: [Vec<u32>; 4],
    names: [Vec<String>; 4],
}

impl Sink for Groups {
    fn feature(&mut self, g: Group, bucket: u32, name: impl FnOnce() -> String) {
        self.entries[g as usize].push(bucket);
        if self.named {
            self.names[g as usize].push(format!("{}:{}", GROUP_NAME[g as usize], name()));
        }
    }
}

/// Feeds the 3-, 4- and 5-grams of `word` (marked `<word>`, its first [`MAX_NGRAM_WORD`]
/// bytes) to `sink`, all the 3-grams first, at most `room` of them; returns how many.
fn char_ngrams(word: &str, room: usize, mask: u32, sink: &mut impl Sink) -> usize {
    let bytes = word.as_bytes();
    let len = bytes.len().min(MAX_NGRAM_WORD);
    let mut buf = [0u8; MAX_NGRAM_WORD + 2];
    buf[0] = b'<';
    buf[1..=len].copy_from_slice(&bytes[..len]);
    buf[len + 1] = b'>';
    let padded = &buf[..len + 2];
    // The hash of each n-gram extends the (n-1)-gram's at the same start by one byte.
    let mut hashes = [Fnv::new(Group::Chars); MAX_NGRAM_WORD + 2];
    for (i, h) in hashes.iter_mut().enumerate().take(padded.len()) {
        *h = h.bytes(&padded[i..(i + 2).min(padded.len())]);
    }
    let mut pushed = 0;
    for n in 3..=5 {
        if padded.len() < n {
            break;
        }
        for start in 0..=padded.len() - n {
            if pushed == room {
                return pushed;
            }
            let gram = &padded[start..start + n];
            hashes[start] = hashes[start].bytes(&gram[n - 1..]);
            sink.feature(Group::Chars, hashes[start].bucket(mask), || {
                String::from_utf8_lossy(gram).into_owned()
            });
            pushed += 1;
        }
    }
    pushed
}

/// The structural fields as feature names.
fn fields(f: &Failure) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = f.exit_code {
        out.push(format!("exit={c}"));
    }
    if let Some(s) = f.signal {
        out.push(format!("signal={s}"));
    }
    if let Some(s) = f.http_status {
        out.push(format!("http={s}"));
        out.push(format!("http={}xx", s / 100));
    }
    if let Some(k) = &f.io_kind {
        out.push(format!("io={}", snake(k)));
    }
    out
}

/// `TimedOut` → `timed_out`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The message itself when short, else its head and tail.
fn clip(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= 2 * HEAD_TAIL_BYTES {
        return message.into();
    }
    let mut head = HEAD_TAIL_BYTES;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - HEAD_TAIL_BYTES;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}\n{}", &message[..head], &message[tail..]).into()
}

/// The normalised words of a message, placeholders included.
#[cfg(test)]
fn words(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    Words::default().each(message, |w| out.push(w.to_string()));
    out
}

/// Scratch space for splitting a message into normalised words without allocating per word.
#[derive(Default)]
struct Words {
    chars: Vec<char>,
    word: String,
}

impl Words {
    /// Calls `f` with each normalised word of `message`, placeholders included.
    fn each(&mut self, message: &str, mut f: impl FnMut(&str)) {
        const OPEN: &[char] = &['"', '\'', '`', '(', '[', '{', '<'];
        const CLOSE: &[char] = &[
            '"', '\'', '`', ')', ']', '}', '>', ',', ';', '.', ':', '!', '?',
        ];
        for raw in message.split_whitespace() {
            let token = raw.trim_start_matches(OPEN).trim_end_matches(CLOSE);
            if token.is_empty() {
                continue;
            }
            if let Some(p) = placeholder(token) {
                f(p);
                // A path's words say whose it is (`/etc/...`, a task's `inputs/...`): they
                // follow its placeholder.
                if p != "<path>" {
                    continue;
                }
            }
            if token.is_ascii() {
                self.split_ascii(token, &mut f);
            } else {
                self.split(token, &mut f);
            }
        }
    }

    /// Splits a token on anything not alphanumeric and on camelCase boundaries, lowercases the
    /// parts and masks numbers and ids.
    fn split(&mut self, token: &str, f: &mut impl FnMut(&str)) {
        for run in token.split(|c: char| !c.is_alphanumeric()) {
            if run.is_empty() {
                continue;
            }
            self.chars.clear();
            self.chars.extend(run.chars());
            let mut start = 0;
            for i in 1..self.chars.len() {
                let (prev, cur) = (self.chars[i - 1], self.chars[i]);
                let next_lower = self.chars.get(i + 1).is_some_and(|c| c.is_lowercase());
                // fooBar | HTTPError: a capital after a lowercase letter, or the last capital
                // of a run of capitals followed by lowercase letters.
                let boundary = cur.is_uppercase()
                    && (prev.is_lowercase() || (prev.is_uppercase() && next_lower));
                if boundary {
                    emit(&mut self.word, &self.chars[start..i], f);
                    start = i;
                }
            }
            emit(&mut self.word, &self.chars[start..], f);
        }
    }

    /// [`Words::split`] for an ASCII token (most of them), byte by byte: the same words.
    fn split_ascii(&mut self, token: &str, f: &mut impl FnMut(&str)) {
        for run in token.split(|c: char| !c.is_ascii_alphanumeric()) {
            let b = run.as_bytes();
            let mut start = 0;
            for i in 1..b.len() {
                let (prev, cur) = (b[i - 1], b[i]);
                let next_lower = b.get(i + 1).is_some_and(u8::is_ascii_lowercase);
                let boundary = cur.is_ascii_uppercase()
                    && (prev.is_ascii_lowercase() || (prev.is_ascii_uppercase() && next_lower));
                if boundary {
                    emit_ascii(&mut self.word, &run[start..i], f);
                    start = i;
                }
            }
            if start < b.len() {
                emit_ascii(&mut self.word, &run[start..], f);
            }
        }
    }
}

/// Lowercases `chars` into `word`, masks it and hands it to `f`.
fn emit(word: &mut String, chars: &[char], f: &mut impl FnMut(&str)) {
    word.clear();
    word.extend(chars.iter().flat_map(|c| c.to_lowercase()));
    let digits = chars.iter().filter(|c| c.is_ascii_digit()).count();
    mask(word, digits, chars.len());
    f(word);
}

/// [`emit`] for an ASCII part.
fn emit_ascii(word: &mut String, part: &str, f: &mut impl FnMut(&str)) {
    word.clear();
    word.push_str(part);
    word.make_ascii_lowercase();
    let digits = part.bytes().filter(u8::is_ascii_digit).count();
    mask(word, digits, part.len());
    f(word);
}

/// The placeholder a whole token stands for: a URL, an IP address, a path or a UUID.
fn placeholder(token: &str) -> Option<&'static str> {
    let b = token.as_bytes();
    // One pass counts what the tests below need: most tokens are plain words and leave here.
    let (mut slashes, mut dots, mut colons) = (0, 0, 0);
    for c in b {
        match c {
            b'/' => slashes += 1,
            b'.' => dots += 1,
            b':' => colons += 1,
            _ => {}
        }
    }
    if slashes == 0 && dots == 0 && colons == 0 && b.len() != 36 {
        return None;
    }
    if b.windows(3).any(|w| w == b"://") || token.starts_with("www.") {
        return Some("<url>");
    }
    // An address has three dots (IPv4) or two colons (IPv6) at least.
    if (dots >= 3 || colons >= 2) && is_ip(token) {
        return Some("<ip>");
    }
    if b.len() == 36 && b.iter().filter(|c| **c == b'-').count() == 4 && is_hexish(token) {
        return Some("<id>");
    }
    if token.starts_with('/') || token.starts_with("~/") || token.starts_with("./") || slashes >= 2
    {
        return Some("<path>");
    }
    None
}

fn is_hexish(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// IPv4 (with an optional port or prefix length) or IPv6 (two or more colons, hex digits).
fn is_ip(token: &str) -> bool {
    let core = token.split(['/', ']']).next().unwrap_or("");
    let core = core.trim_start_matches('[');
    let v4 = core.rsplit_once(':').map_or(core, |(a, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            a
        } else {
            core
        }
    });
    if v4.split('.').count() == 4
        && v4
            .split('.')
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    core.bytes().filter(|b| *b == b':').count() >= 2
        && core
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        && core.bytes().any(|b| b.is_ascii_hexdigit())
}

/// A lowercase word (`word`, of `len` characters, `digits` of them ASCII digits), or its
/// placeholder: `<num>` for numbers longer than 3 digits (shorter ones are status codes, errnos
/// and exit codes, kept), `<hex>` for hex ids, `<id>` for long mixed ids.
fn mask(word: &mut String, digits: usize, len: usize) {
    let placeholder = if digits == len {
        (digits > 3).then_some("<num>")
    } else if digits > 0 {
        let hex = word.bytes().all(|b| b.is_ascii_hexdigit());
        let hex_prefixed = word.len() > 2
            && word.starts_with("0x")
            && word[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if (hex && word.len() >= 4) || hex_prefixed {
            Some("<hex>")
        } else if word.len() >= 8 && digits >= 3 {
            Some("<id>")
        } else {
            None
        }
    } else {
        None
    };
    if let Some(p) = placeholder {
        word.clear();
        word.push_str(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_numbers_ids_addresses_and_case() {
        let w = words(
            "curl: (7) Failed to connect to 10.0.0.12:443 after 30001 ms: ConnectionResetError \
             at https://x.example/a id=123e4567-e89b-12d3-a456-426614174000 0x7ffd12 /tmp/a/b",
        );
        assert_eq!(
            w.join(" "),
            "curl 7 failed to connect to <ip> after <num> ms connection reset error at <url> \
             id <hex> <hex> <hex> <hex> <num> <hex> <path> tmp a b"
        );
        assert_eq!(
            words("HTTPError TypeError ENOSPC tlsv1")[..],
            ["http", "error", "type", "error", "enospc", "tlsv1"]
        );
        assert_eq!(words("[fe80::1]:22 ::1")[..], ["<ip>", "<ip>"]);
        assert_eq!(
            words("run 123e4567-e89b-12d3-a456-426614174000:")[..],
            ["run", "<id>"]
        );
        assert_eq!(
            words("job-a1b2c3z4y5 k2 ipv4")[..],
            ["job", "<id>", "k2", "ipv4"]
        );
    }

    #[test]
    fn ascii_tokens_split_as_the_general_path_splits_them() {
        let tokens = [
            "HTTPError",
            "fooBarBAZQux",
            "snake_case_name",
            "k8s-job-a1b2c3z4y5",
            "0x7ffd12",
            "ERR_CONNECTION_RESET",
            "x",
            "ABC",
            "12345",
            "tlsv1.3",
            "IOError:ENOSPC",
        ];
        for token in tokens {
            let (mut general, mut ascii) = (Vec::new(), Vec::new());
            let mut w = Words::default();
            w.split(token, &mut |x: &str| general.push(x.to_string()));
            w.split_ascii(token, &mut |x: &str| ascii.push(x.to_string()));
            assert_eq!(general, ascii, "{token}");
            assert!(!ascii.is_empty(), "{token}");
        }
    }

    #[test]
    fn groups_are_unit_scaled_and_named() {
        let f = Failure {
            message: "Connection reset".into(),
            exit_code: Some(56),
            http_status: Some(503),
            io_kind: Some("TimedOut".into()),
            ..Failure::default()
        };
        let feats = extract(&f, (1 << 16) - 1, true);
        assert!(feats.has_text);
        assert_eq!(feats.entries.len(), feats.names.len());
        assert!(feats.names.contains(&"bigram:connection reset".to_string()));
        assert!(feats.names.contains(&"field:http=5xx".to_string()));
        assert!(feats.names.contains(&"field:io=timed_out".to_string()));
        assert!(feats.names.contains(&"chars:<res".to_string()));
        let norm: f32 = feats.entries[..2].iter().map(|e| e.1 * e.1).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(!extract(&Failure::default(), 255, false).has_text);
        let long = "x".repeat(10_000) + " no space left";
        assert!(words(&clip(&long)).contains(&"space".to_string()));
    }
}
