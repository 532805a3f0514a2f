//! `check_config`, as the producer's validate calls it: every problem named, references skipped.

use super::tool;
use serde_json::json;

#[test]
fn check_config_reports_every_problem_and_skips_references() {
    let nuclei = tool("scan.nuclei");
    assert!(
        nuclei
            .check_config(&json!({"templates": "res://nuclei/templates:latest"}))
            .is_empty()
    );
    assert!(
        nuclei
            .check_config(
                &json!({"templates": "${params.templates}", "rate_limit": "${params.rate}"})
            )
            .is_empty()
    );
    let problems = nuclei.check_config(
        &json!({"rate_limit": 0, "severity": ["urgent"], "tags": "x", "templates": "wordlists"}),
    );
    let all = problems.join("\n");
    assert_eq!(problems.len(), 4, "{all}");
    assert!(all.contains("scan.nuclei: config.rate_limit: 0 is below the minimum of 1"));
    assert!(all.contains("scan.nuclei: config.severity: item 0: \"urgent\" is not allowed"));
    assert!(all.contains("scan.nuclei: config.tags: expected a list, got a string"));
    assert!(all.contains("scan.nuclei: config.templates: `wordlists` is not a resource reference"));
    let required = nuclei.check_config(&json!({}));
    assert_eq!(
        required,
        ["scan.nuclei: config.templates: required setting is missing (resource)"]
    );
    let ffuf = tool("discovery.ffuf").check_config(&json!({"url": "http://a/"}));
    assert_eq!(
        ffuf,
        ["discovery.ffuf: config.url: `http://a/` does not match the pattern `^https?://.*FUZZ`"]
    );
}
