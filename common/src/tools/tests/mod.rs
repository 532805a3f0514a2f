//! Tests of the tool definitions: the built-in file, recorded outputs of each tool, load-time
//! checks, rendering, and the stand-in programs run with rendered command lines.

use super::{Parsed, ToolDef, ToolSet};
use std::path::PathBuf;

mod check;
mod fixtures;
mod load;
mod render;
mod standins;

/// The built-in definitions.
fn builtin() -> ToolSet {
    ToolSet::builtin().unwrap()
}

/// The built-in definition of `name`.
fn tool(name: &str) -> ToolDef {
    builtin().get(name).unwrap().clone()
}

/// `common/tests/fixtures/tools/<tool>/<file>`.
fn fixture(tool: &str, file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tools")
        .join(tool)
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Parses a fixture with the built-in definition, from stdout or the output file as the
/// definition reads.
fn parse_fixture(name: &str, file: &str) -> Parsed {
    let def = tool(name);
    let data = fixture(name, file);
    match def.output_from() {
        super::OutputFrom::Stdout => def.parse(&data, None),
        super::OutputFrom::File => def.parse(b"noise on stdout", Some(&data)),
    }
}

/// The values of a dataset as strings.
fn dataset(parsed: &Parsed, name: &str) -> Vec<String> {
    parsed.datasets[name]
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("secflow-tools-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_embedded_file_is_valid_and_defines_every_builtin_tool() {
    let set = ToolSet::builtin().unwrap();
    assert_eq!(
        set.names(),
        vec![
            "crawl.katana",
            "discovery.ferox",
            "discovery.ffuf",
            "discovery.subfinder",
            "scan.httpx",
            "scan.nmap",
            "scan.nuclei",
        ]
    );
    for name in set.names() {
        let def = set.get(name).unwrap();
        assert!(!def.description().is_empty(), "{name}");
        // Built-ins take the error table's default retries (the worker's tool policy).
        assert!(
            def.timeout_ms().is_some_and(|t| t <= 25 * 60 * 1000) && def.retry().is_none(),
            "{name}"
        );
        assert_eq!(def.datasets()[0], "findings");
    }
    assert_eq!(tool("scan.nuclei").datasets(), vec!["findings", "urls"]);
    assert_eq!(tool("scan.nmap").datasets(), vec!["findings", "services"]);
    assert_eq!(
        tool("discovery.subfinder").datasets(),
        vec!["findings", "hosts"]
    );
    assert_eq!(tool("scan.nuclei").declared_inputs(), vec!["urls"]);
    assert!(tool("scan.nuclei").input_required("urls"));
    assert!(!tool("scan.nmap").input_required("hosts"));
    assert_eq!(tool("scan.nuclei").timeout_ms(), Some(1_500_000));
}
