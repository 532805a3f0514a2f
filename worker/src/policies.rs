//! Which retry policy applies to a failure: by node type and error class, with the task's own
//! policy (from its recipe) over all of them.

use secflow_common::{ErrorClass, retry::RetryPolicy};
use std::collections::HashMap;

/// Retry policies by type and class.
#[derive(Clone, Debug, Default)]
pub struct PolicyTable {
    by_type_class: HashMap<(String, ErrorClass), RetryPolicy>,
    by_type: HashMap<String, RetryPolicy>,
    by_class: HashMap<ErrorClass, RetryPolicy>,
    default: RetryPolicy,
}

/// Where a configured policy applies.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// Every class of one node type: `http`.
    Type(String),
    /// One class of one node type: `http/transient`.
    TypeClass(String, ErrorClass),
    /// One class of every node type: `*/resource`.
    Class(ErrorClass),
}

impl Scope {
    /// Parses `TYPE`, `TYPE/CLASS` or `*/CLASS`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            None => {
                secflow_common::envelope::check_node_type(s)?;
                Ok(Self::Type(s.to_string()))
            }
            Some(("*", class)) => Ok(Self::Class(class.parse()?)),
            Some((ty, class)) => {
                secflow_common::envelope::check_node_type(ty)?;
                Ok(Self::TypeClass(ty.to_string(), class.parse()?))
            }
        }
    }
}

impl PolicyTable {
    /// Built-in defaults: remote services get more patience than local tools.
    pub fn with_defaults() -> Self {
        let mut table = Self::default();
        table.set(
            Scope::Type("http".into()),
            RetryPolicy {
                max_attempts: 6,
                base_delay_ms: 2_000,
                ..RetryPolicy::default()
            },
        );
        table.set(
            Scope::Type("exec".into()),
            RetryPolicy {
                max_attempts: 3,
                base_delay_ms: 5_000,
                ..RetryPolicy::default()
            },
        );
        table
    }

    /// Sets the policy of `scope`.
    pub fn set(&mut self, scope: Scope, policy: RetryPolicy) {
        match scope {
            Scope::Type(t) => drop(self.by_type.insert(t, policy)),
            Scope::TypeClass(t, c) => drop(self.by_type_class.insert((t, c), policy)),
            Scope::Class(c) => drop(self.by_class.insert(c, policy)),
        }
    }

    /// The policy for a failure of `class` in a task of `node_type`; the task's own policy wins.
    pub fn lookup<'a>(
        &'a self,
        task_policy: Option<&'a RetryPolicy>,
        node_type: &str,
        class: Option<ErrorClass>,
    ) -> &'a RetryPolicy {
        let type_class = class.and_then(|c| self.by_type_class.get(&(node_type.to_string(), c)));
        task_policy
            .or(type_class)
            .or_else(|| self.by_type.get(node_type))
            .or_else(|| class.and_then(|c| self.by_class.get(&c)))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(n: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: n,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn most_specific_policy_wins() {
        let mut t = PolicyTable::default();
        t.set(Scope::parse("*/resource").unwrap(), attempts(2));
        t.set(Scope::parse("http").unwrap(), attempts(3));
        t.set(Scope::parse("http/transient").unwrap(), attempts(4));
        let own = attempts(9);
        assert_eq!(
            t.lookup(None, "http", Some(ErrorClass::Transient))
                .max_attempts,
            4
        );
        assert_eq!(
            t.lookup(None, "http", Some(ErrorClass::Resource))
                .max_attempts,
            3
        );
        assert_eq!(
            t.lookup(None, "exec", Some(ErrorClass::Resource))
                .max_attempts,
            2
        );
        assert_eq!(
            t.lookup(None, "exec", Some(ErrorClass::Transient))
                .max_attempts,
            5
        );
        assert_eq!(
            t.lookup(Some(&own), "http", Some(ErrorClass::Transient))
                .max_attempts,
            9
        );
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(
            Scope::parse("scan.nuclei"),
            Ok(Scope::Type("scan.nuclei".into()))
        );
        assert!(Scope::parse("http/fatal").unwrap_err().contains("fatal"));
        assert!(Scope::parse("Bad Type").is_err());
    }
}
