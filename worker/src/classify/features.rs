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

/// Extracts the features of `f` into `mask + 1` buckets; `named` also records their names.
pub fn extract(f: &Failure, mask: u32, named: bool) -> Features {
    let mut out = Builder {
        mask,
        named,
        feats: Features {
            entries: Vec::with_capacity(f.message.len().min(4 * HEAD_TAIL_BYTES) * 4 + 16),
            ..Features::default()
        },
        group_start: [0; 4],
    };
    let words = words(&clip(&f.message));
    out.feats.has_text = !words.is_empty();
    out.start(Group::Word);
    for w in &words {
        out.push(
            Fnv::new(Group::Word).bytes(w.as_bytes()),
            Group::Word,
            || w.clone(),
        );
    }
    out.finish(Group::Word);
    out.start(Group::Bigram);
    for pair in words.windows(2) {
        let h = Fnv::new(Group::Bigram)
            .bytes(pair[0].as_bytes())
            .bytes(b" ")
            .bytes(pair[1].as_bytes());
        out.push(h, Group::Bigram, || format!("{} {}", pair[0], pair[1]));
    }
    out.finish(Group::Bigram);
    out.start(Group::Chars);
    for w in words.iter().filter(|w| !w.starts_with('<')) {
        if !char_ngrams(w, &mut out) {
            break;
        }
    }
    out.finish(Group::Chars);
    out.start(Group::Structure);
    for field in fields(f) {
        out.push(
            Fnv::new(Group::Structure).bytes(field.as_bytes()),
            Group::Structure,
            || field.clone(),
        );
    }
    out.finish(Group::Structure);
    out.feats
}

/// Accumulates features group by group and scales each group to its weight.
struct Builder {
    mask: u32,
    named: bool,
    feats: Features,
    group_start: [usize; 4],
}

impl Builder {
    fn start(&mut self, g: Group) {
        self.group_start[g as usize] = self.feats.entries.len();
    }
    fn push(&mut self, h: Fnv, g: Group, name: impl FnOnce() -> String) {
        self.feats.entries.push((h.bucket(self.mask), 1.0));
        if self.named {
            self.feats
                .names
                .push(format!("{}:{}", GROUP_NAME[g as usize], name()));
        }
    }
    fn finish(&mut self, g: Group) {
        let part = &mut self.feats.entries[self.group_start[g as usize]..];
        if !part.is_empty() {
            let scale = GROUP_WEIGHT[g as usize] / (part.len() as f32).sqrt();
            part.iter_mut().for_each(|e| e.1 = scale);
        }
    }
}

/// Pushes the n-grams of `word`; false once the message's cap is reached.
fn char_ngrams(word: &str, out: &mut Builder) -> bool {
    let room = MAX_CHAR_GRAMS
        .saturating_sub(out.feats.entries.len() - out.group_start[Group::Chars as usize]);
    let bytes = word.as_bytes();
    let len = bytes.len().min(MAX_NGRAM_WORD);
    let mut buf = [0u8; MAX_NGRAM_WORD + 2];
    buf[0] = b'<';
    buf[1..=len].copy_from_slice(&bytes[..len]);
    buf[len + 1] = b'>';
    let padded = &buf[..len + 2];
    let grams = (3..=5).flat_map(|n| padded.windows(n));
    let mut pushed = 0;
    for gram in grams.take(room) {
        out.push(Fnv::new(Group::Chars).bytes(gram), Group::Chars, || {
            String::from_utf8_lossy(gram).into_owned()
        });
        pushed += 1;
    }
    pushed < room
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
pub fn words(message: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(message.len() / 4 + 1);
    let mut chars = Vec::new();
    for raw in message.split_whitespace() {
        let token = raw
            .trim_start_matches(|c: char| "\"'`([{<".contains(c))
            .trim_end_matches(|c: char| "\"'`)]}>,;.:!?".contains(c));
        if token.is_empty() {
            continue;
        }
        if let Some(p) = placeholder(token) {
            out.push(p.to_string());
            continue;
        }
        split_words(token, &mut chars, &mut out);
    }
    out
}

/// The placeholder a whole token stands for: a URL, an IP address, a path or a UUID.
fn placeholder(token: &str) -> Option<&'static str> {
    if token.contains("://") || token.starts_with("www.") {
        return Some("<url>");
    }
    if is_ip(token) {
        return Some("<ip>");
    }
    if token.len() == 36 && token.bytes().filter(|b| *b == b'-').count() == 4 && is_hexish(token) {
        return Some("<id>");
    }
    let slashes = token.bytes().filter(|b| *b == b'/').count();
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

/// Splits a token on anything not alphanumeric and on camelCase boundaries, lowercases the
/// parts and masks numbers and ids.
fn split_words(token: &str, chars: &mut Vec<char>, out: &mut Vec<String>) {
    for run in token.split(|c: char| !c.is_alphanumeric()) {
        if run.is_empty() {
            continue;
        }
        chars.clear();
        chars.extend(run.chars());
        let mut start = 0;
        for i in 1..chars.len() {
            let (prev, cur) = (chars[i - 1], chars[i]);
            let next_lower = chars.get(i + 1).is_some_and(|c| c.is_lowercase());
            // fooBar | HTTPError: a capital after a lowercase letter, or the last capital of a
            // run of capitals followed by lowercase letters.
            let boundary =
                cur.is_uppercase() && (prev.is_lowercase() || (prev.is_uppercase() && next_lower));
            if boundary {
                out.push(mask(&chars[start..i]));
                start = i;
            }
        }
        out.push(mask(&chars[start..]));
    }
}

/// A lowercase word, or its placeholder: `<num>` for numbers longer than 3 digits (shorter ones
/// are status codes, errnos and exit codes, kept), `<hex>` for hex ids, `<id>` for long
/// mixed ids.
fn mask(chars: &[char]) -> String {
    let digits = chars.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == chars.len() {
        return if digits <= 3 {
            chars.iter().collect()
        } else {
            "<num>".into()
        };
    }
    let word: String = chars.iter().flat_map(|c| c.to_lowercase()).collect();
    if digits > 0 {
        let hex = word.bytes().all(|b| b.is_ascii_hexdigit());
        let hex_prefixed = word.len() > 2
            && word.starts_with("0x")
            && word[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if (hex && word.len() >= 4) || hex_prefixed {
            return "<hex>".into();
        }
        if word.len() >= 8 && digits >= 3 {
            return "<id>".into();
        }
    }
    word
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
             id <hex> <hex> <hex> <hex> <num> <hex> <path>"
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
