//! Unit tests of hook parsing, checking, ids and signatures.

use super::*;

const GOOD: &str = r#"
hooks:
  on_node_complete:
    - url: "http://127.0.0.1:9000/secflow"
      timeout: 10s
      max_attempts: 8
  on_workflow_complete:
    - exec: ["notify", "--channel", "secops"]
    - url: "https://hooks.example.com/x"
"#;

#[test]
fn a_good_file_resolves_with_stable_ids_and_defaults() {
    let hooks = parse_file("h.yaml", GOOD).unwrap();
    let ids: Vec<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "fleet:on_node_complete:0",
            "fleet:on_workflow_complete:0",
            "fleet:on_workflow_complete:1"
        ]
    );
    assert_eq!(hooks[1].timeout, DEFAULT_TIMEOUT);
    assert_eq!(hooks[1].max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(hooks[1].target.kind(), "exec");
    assert_eq!(hooks[0].on, HookOn::NodeComplete);
}

#[test]
fn every_problem_names_its_field() {
    let spec = HooksSpec {
        on_node_complete: vec![
            HookSpec {
                url: None,
                exec: None,
                timeout: None,
                max_attempts: None,
            },
            HookSpec {
                url: Some("ftp://x".into()),
                exec: None,
                timeout: Some("2m".into()),
                max_attempts: Some(0),
            },
        ],
        on_workflow_complete: vec![
            HookSpec {
                url: Some("http://x".into()),
                exec: Some(vec!["a".into()]),
                timeout: None,
                max_attempts: None,
            },
            HookSpec {
                url: None,
                exec: Some(vec![]),
                timeout: Some("soon".into()),
                max_attempts: Some(11),
            },
        ],
    };
    let problems: Vec<String> = spec.problems().iter().map(ToString::to_string).collect();
    let all = problems.join("\n");
    for expected in [
        "hooks.on_node_complete[0]: needs `url` (a webhook) or `exec`",
        "hooks.on_node_complete[1].url: `ftp://x` must be an http:// or https:// URL",
        "hooks.on_node_complete[1].timeout: `2m` must be between 100 ms and 60 s",
        "hooks.on_node_complete[1].max_attempts: 0 must be between 1 and 10",
        "hooks.on_workflow_complete[0]: has both `url` and `exec`",
        "hooks.on_workflow_complete[1].exec: must name a program",
        "hooks.on_workflow_complete[1].timeout: `soon` is not a duration",
        "hooks.on_workflow_complete[1].max_attempts: 11 must be between 1 and 10",
    ] {
        assert!(all.contains(expected), "missing `{expected}` in:\n{all}");
    }
    assert_eq!(problems.len(), 8, "{all}");
}

#[test]
fn unknown_fields_and_lists_are_refused_with_their_place() {
    let e = parse_file(
        "h.yaml",
        "hooks:\n  on_node_complete:\n    - url: http://x\n      retries: 3\n",
    )
    .unwrap_err();
    assert!(
        e.contains("h.yaml") && e.contains("unknown field `retries`"),
        "{e}"
    );
    assert!(e.contains("on_node_complete[0]"), "{e}");
    let e = parse_file("h.yaml", "hooks:\n  on_task_fail: []\n").unwrap_err();
    assert!(e.contains("unknown field `on_task_fail`"), "{e}");
    let e = parse_file("h.yaml", "on_node_complete: []\n").unwrap_err();
    assert!(e.contains("hooks"), "{e}");
}

#[test]
fn urls_need_a_scheme_and_a_host() {
    assert!(check_url("http://127.0.0.1:9000/x").is_ok());
    assert!(check_url("HTTPS://user:pw@h.example/x?y#z").is_ok());
    for bad in [
        "127.0.0.1:9000",
        "http://",
        "http:///x",
        "http://:80/",
        "http://a b/",
    ] {
        assert!(check_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn events_map_to_their_lists() {
    assert_eq!(
        HookOn::for_event("node.completed"),
        Some(HookOn::NodeComplete)
    );
    assert_eq!(
        HookOn::for_event("workflow.failed"),
        Some(HookOn::WorkflowComplete)
    );
    assert_eq!(
        HookOn::for_event("workflow.completed"),
        Some(HookOn::WorkflowComplete)
    );
    assert_eq!(HookOn::for_event("node.retrying"), None);
    assert_eq!(HookOn::for_event("hook.failed"), None);
}

#[test]
fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
    // Reference value computed independently (Python's hmac module).
    assert_eq!(
        signature(b"0123456789abcdef-secret", 1_700_000_000, br#"{"a":1}"#),
        "sha256=6948a2dc6985c92d09b9edade5c97dce2ba201452d91a72e4a20d35abe4d3420"
    );
    assert_eq!(
        marker_key("ns", "fleet:on_node_complete:0", "E"),
        "sf:{ns}:hook:fleet:on_node_complete:0:E"
    );
}

#[test]
fn sealed_hooks_open_only_for_their_run_and_a_known_key() {
    let spec = parse_spec(GOOD);
    let ring = crate::signing::Keyring::parse("k1:0123456789abcdef0123").unwrap();
    let other = crate::signing::Keyring::parse("k2:0123456789abcdef0123").unwrap();
    let sealed = SealedHooks::seal(&spec, "R1", Some(&ring)).unwrap();
    assert_eq!(sealed.open("R1", Some(&ring)).unwrap(), spec);
    assert!(
        sealed
            .open("R2", Some(&ring))
            .unwrap_err()
            .contains("not trusted")
    );
    assert!(sealed.open("R1", Some(&other)).is_err());
    let mut tampered = sealed.clone();
    tampered.spec = tampered.spec.replace("notify", "evil");
    assert!(tampered.open("R1", Some(&ring)).is_err());
    let unsigned = SealedHooks::seal(&spec, "R1", None).unwrap();
    assert!(
        unsigned
            .open("R1", Some(&ring))
            .unwrap_err()
            .contains("not signed")
    );
    assert_eq!(unsigned.open("R1", None).unwrap(), spec);
}

fn parse_spec(text: &str) -> HooksSpec {
    #[derive(serde::Deserialize)]
    struct File {
        hooks: HooksSpec,
    }
    yaml_serde::from_str::<File>(text).unwrap().hooks
}
