//! Unit tests of the hook settings a worker starts with.

use super::*;
use crate::{classify::Classifier, handlers::ExecPolicy};

fn build(cfg: &WorkerConfig) -> Result<Hooks, String> {
    let handlers = Handlers::new(
        1024,
        Classifier::defaults(),
        ExecPolicy::new(&[], None, None).unwrap(),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let runs = RunStore::new(&cfg.broker.redis_url, &cfg.broker.namespace).unwrap();
    Hooks::new(
        cfg,
        Arc::new(handlers),
        Arc::new(runs),
        None,
        "w",
        Arc::default(),
    )
}

fn file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("secflow-hooks-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

const SECRET: &str = "0123456789abcdef0123";

#[test]
fn fleet_hooks_need_a_secret_and_a_valid_file() {
    let mut cfg = WorkerConfig::local("t");
    cfg.hooks = Some(file(
        "ok.yaml",
        "hooks:\n  on_node_complete:\n    - url: http://127.0.0.1:1/x\n",
    ));
    let e = build(&cfg).err().unwrap();
    assert!(e.contains("no hook secret is set"), "{e}");
    cfg.hook_secret = Some(SECRET.into());
    let hooks = build(&cfg).unwrap();
    assert!(hooks.has_fleet_hooks() && hooks.can_deliver());
    cfg.hooks = Some(file(
        "bad.yaml",
        "hooks:\n  on_node_complete:\n    - url: ftp://x\n",
    ));
    let e = build(&cfg).err().unwrap();
    assert!(
        e.contains(
            "bad.yaml: hooks.on_node_complete[0].url: `ftp://x` must be an http:// or https:// URL"
        ),
        "{e}"
    );
    cfg.hooks = Some("/nonexistent/hooks.yaml".into());
    let e = build(&cfg).err().unwrap();
    assert!(
        e.contains("--hooks /nonexistent/hooks.yaml: cannot read it"),
        "{e}"
    );
}

#[test]
fn the_secret_comes_from_one_place_and_is_long_enough() {
    let mut cfg = WorkerConfig::local("t");
    assert!(
        !build(&cfg).unwrap().can_deliver(),
        "no secret: no deliveries"
    );
    cfg.hook_secret_file = Some(file("secret", &format!("{SECRET}\n")));
    assert_eq!(
        build(&cfg).unwrap().secret.as_deref(),
        Some(SECRET.as_bytes())
    );
    cfg.hook_secret = Some(SECRET.into());
    assert!(build(&cfg).err().unwrap().contains("choose one"));
    cfg.hook_secret_file = None;
    cfg.hook_secret = Some("short".into());
    assert!(build(&cfg).err().unwrap().contains("at least 16"));
}
