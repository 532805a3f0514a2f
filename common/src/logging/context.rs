//! The fields of the unit of work a line is logged in: for a delivery its trace, span, worker
//! and attempt, then its task, run, node and type once read, and its error class and code once
//! decided. They are kept with the work's future (a task-local) rather than in a `tracing`
//! span: every layer enters and leaves a span at each poll of the future it instruments, which
//! cost each delivery microseconds whether or not a line was written; the context is only read
//! when a line is. A line logged while a `tracing` span is current shows that span instead.

use std::{cell::RefCell, future::Future};

tokio::task_local! {
    static CONTEXT: RefCell<Context>;
}

/// A field's value as written.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl serde::Serialize for FieldValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::Str(v) => s.serialize_str(v),
            FieldValue::I64(v) => s.serialize_i64(*v),
            FieldValue::U64(v) => s.serialize_u64(*v),
            FieldValue::F64(v) => s.serialize_f64(*v),
            FieldValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Str(v) => f.write_str(v),
            FieldValue::I64(v) => v.fmt(f),
            FieldValue::U64(v) => v.fmt(f),
            FieldValue::F64(v) => v.fmt(f),
            FieldValue::Bool(v) => v.fmt(f),
        }
    }
}

impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::Str(v)
    }
}

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::Str(v.to_string())
    }
}

impl From<u64> for FieldValue {
    fn from(v: u64) -> Self {
        FieldValue::U64(v)
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}

/// Named fields in the order they were first set; a field set again keeps its place.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Fields(pub(super) Vec<(&'static str, FieldValue)>);

impl Fields {
    pub(super) fn set(&mut self, name: &'static str, value: FieldValue) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

/// A unit of work's fields and its name (written as the line's `span`).
#[derive(Clone, Debug)]
pub struct Context {
    pub(super) name: &'static str,
    pub(super) fields: Fields,
}

impl Context {
    /// An empty context named `name` (e.g. `delivery`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            fields: Fields(Vec::with_capacity(12)),
        }
    }

    /// With `field` set to `value`.
    pub fn with(mut self, field: &'static str, value: impl Into<FieldValue>) -> Self {
        self.fields.set(field, value.into());
        self
    }
}

/// Runs `work` in `context`: every line logged while it runs (outside a `tracing` span)
/// carries the context's fields.
pub async fn scope<F: Future>(context: Context, work: F) -> F::Output {
    CONTEXT.scope(RefCell::new(context), work).await
}

/// Sets `field` of the current work's context; nothing outside one.
pub fn record(field: &'static str, value: impl Into<FieldValue>) {
    let _ = CONTEXT.try_with(|cx| cx.borrow_mut().fields.set(field, value.into()));
}

/// Calls `f` with the current work's context, if there is one.
pub(super) fn with_current<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    CONTEXT
        .try_with(|cx| cx.try_borrow().ok().map(|cx| f(&cx)))
        .ok()
        .flatten()
}

/// The current context as text (`name{a=1 b=x}`), for the text format.
pub(super) fn describe() -> Option<String> {
    with_current(|cx| {
        let mut text = String::with_capacity(160);
        text.push_str(cx.name);
        text.push('{');
        for (i, (name, value)) in cx.fields.0.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(name);
            text.push('=');
            text.push_str(&value.to_string());
        }
        text.push('}');
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fields_are_kept_with_the_work_and_set_in_place() {
        assert_eq!(describe(), None, "no context outside a scope");
        let cx = Context::new("delivery")
            .with("worker", "w-1")
            .with("attempt", 2u64);
        scope(cx, async {
            record("task_id", "t-1");
            record("attempt", 3u64);
            tokio::task::yield_now().await;
            assert_eq!(
                describe().as_deref(),
                Some("delivery{worker=w-1 attempt=3 task_id=t-1}")
            );
            // Work spawned from it has a context of its own, or none.
            let spawned = tokio::spawn(async { describe() }).await.unwrap();
            assert_eq!(spawned, None);
        })
        .await;
        assert_eq!(describe(), None);
    }
}
