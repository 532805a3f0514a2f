//! Finding a cycle in a recipe's inputs, to name it in the error.

use super::NodeSpec;
use std::collections::HashMap;

/// A cycle through the inputs, as node ids ending where it started, if there is one.
pub(super) fn find_cycle(
    nodes: &[NodeSpec],
    by_id: &HashMap<&str, &NodeSpec>,
) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let upstreams = |n: &NodeSpec| -> Vec<String> {
        n.inputs
            .values()
            .filter_map(|s| s.split_once('.'))
            .map(|(up, _)| up.to_string())
            .filter(|up| by_id.contains_key(up.as_str()) && *up != n.id)
            .collect()
    };
    let mut marks: HashMap<&str, Mark> = nodes.iter().map(|n| (n.id.as_str(), Mark::New)).collect();
    for start in nodes {
        if marks[start.id.as_str()] != Mark::New {
            continue;
        }
        // Iterative depth-first search (a 20,000-node chain must not overflow the stack).
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.id.clone(), upstreams(start))];
        marks.insert(&start.id, Mark::Active);
        while let Some((id, pending)) = stack.last_mut() {
            match pending.pop() {
                Some(next) => match marks[next.as_str()] {
                    Mark::Active => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.clone()).collect();
                        cycle.reverse();
                        cycle.insert(0, next.clone());
                        return Some(cycle);
                    }
                    Mark::New => {
                        let node = by_id[next.as_str()];
                        marks.insert(&node.id, Mark::Active);
                        stack.push((next, upstreams(node)));
                    }
                    Mark::Done => {}
                },
                None => {
                    let node = by_id[id.as_str()];
                    marks.insert(&node.id, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    None
}
