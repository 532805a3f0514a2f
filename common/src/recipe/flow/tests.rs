//! Unit tests of the data flow checks: text and scalars pass, a structured value passes with a
//! rule, and without one it is refused with a message naming the node, the field, the input,
//! its source and the rules.

use crate::recipe::{parse, validate};
use serde_json::Value;
use std::collections::BTreeMap;

const HEAD: &str = "version: 1\nname: t\nparameters:\n  ports: {default: [80, 443]}\n  port: {default: 8080}\nnodes:\n  - {id: discovery, type: discovery.ferox, config: {url: 'http://a/'}, outputs: [urls]}\n  - {id: run, type: exec, config: {argv: [sh, -c, 'echo hi']}, outputs: [stdout, exit_code]}\n  - {id: e, type: builtin.echo, config: {urls: ['http://a/1']}, outputs: [echo]}\n";

fn errors(nodes: &str) -> Vec<String> {
    let recipe = parse("r.yaml", &format!("{HEAD}{nodes}")).unwrap();
    validate("r.yaml", &recipe, &BTreeMap::<String, Value>::new())
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn text_scalars_and_ruled_lists_are_accepted() {
    let nodes = [
        "  - {id: x, type: exec, inputs: {out: run.stdout, code: run.exit_code}, config: {argv: [echo, '${inputs.out}', '${inputs.code}', 'code=${inputs.code}'], env: {C: '${inputs.code}'}}}\n",
        "  - {id: x, type: exec, inputs: {urls: discovery.urls}, config: {argv: [sh, -c, 'wc -l < $1', _, '${inputs.urls:file}', '${inputs.urls:lines}', '-u=${inputs.urls:csv}'], env: {U: '${inputs.urls:json}'}}}\n",
        "  - {id: x, type: http, inputs: {urls: discovery.urls, echo: e.echo}, config: {url: 'http://h/?u=${inputs.urls:csv}', method: POST, headers: {X-Echo: '${inputs.echo:json}'}, body: '${inputs.urls:lines}', }}\n",
        "  - {id: x, type: http, inputs: {echo: e.echo}, config: {url: 'http://h/', method: POST, json: '${inputs.echo}'}}\n",
        "  - {id: x, type: exec, config: {argv: [echo, '${params.ports:csv}', '${params.port}']}}\n",
        "  - {id: x, type: builtin.echo, inputs: {urls: discovery.urls}, config: {all: '${inputs.urls}'}}\n",
    ];
    for node in nodes {
        assert_eq!(errors(node), Vec::<String>::new(), "{node}");
    }
}

#[test]
fn a_tool_list_without_a_rule_is_refused_with_the_rules_to_write() {
    let errors = errors(
        "  - {id: x, type: exec, inputs: {urls: discovery.urls}, config: {argv: [sh, -c, '${inputs.urls}'], cwd: '${inputs.urls}'}}\n",
    );
    assert_eq!(
        errors,
        [
            "r.yaml: node `x`: config.argv[2]: `${inputs.urls}` is a list (output `urls` of node `discovery`, a discovery.ferox tool); this field needs text: write ${inputs.urls:lines}, ${inputs.urls:csv}, ${inputs.urls:json} or ${inputs.urls:file}",
            "r.yaml: node `x`: config.cwd: `${inputs.urls}` is a list (output `urls` of node `discovery`, a discovery.ferox tool); this field needs text: write ${inputs.urls:lines}, ${inputs.urls:csv} or ${inputs.urls:json}",
        ]
    );
}

#[test]
fn an_echo_object_a_list_param_and_misplaced_rules_are_refused() {
    let errors = errors(
        "  - {id: x, type: http, inputs: {echo: e.echo, urls: discovery.urls}, config: {url: '${inputs.urls:file}', headers: {A: 'v=${inputs.echo}'}, body: '${params.ports}', method: '${inputs.echo:upper}'}}\n",
    )
    .join("\n");
    for expected in [
        "node `x`: config.headers.A: `${inputs.echo}` is an object (output `echo` of node `e`, a builtin.echo node); this field needs text: write ${inputs.echo:lines}, ${inputs.echo:csv} or ${inputs.echo:json}",
        "node `x`: config.body: `${params.ports}` is a list (parameter `ports`); this field needs text: write ${params.ports:lines}, ${params.ports:csv} or ${params.ports:json}",
        "node `x`: config.url: `${inputs.urls:file}`: the file rule is only for the arguments of an exec node (config.argv[1] onwards)",
        "node `x`: config.method: `${inputs.echo:upper}`: unknown rule `upper` (known rules: lines, csv, json, file)",
    ] {
        assert!(
            errors.contains(expected),
            "missing `{expected}` in:\n{errors}"
        );
    }
    assert_eq!(errors.lines().count(), 4, "{errors}");
}

#[test]
fn a_field_that_cannot_take_an_input_is_refused() {
    let errors = errors(
        "  - {id: x, type: exec, inputs: {out: run.stdout}, config: {argv: '${inputs.out}'}}\n  - {id: y, type: builtin.echo, inputs: {out: run.stdout}, config: {f: '${inputs.out:file}'}}\n",
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("node `x`: config: exec: invalid config: invalid type: string"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("node `y`: config.f: `${inputs.out:file}`: the file rule is only for"),
        "{errors:?}"
    );
}
