//! The log filter, replaceable at run time, without a lock on the hot path.
//!
//! `tracing_subscriber::reload` takes a lock on every callback, and `EnvFilter` takes another
//! on every span entered, exited or closed: per poll of every instrumented task. Both are only
//! needed when the filter has span or field directives (`[span{field=value}]`, "dynamic"
//! ones); a filter of targets and levels decides per callsite, once, and the callsite cache
//! keeps its answer. So span callbacks reach the filter only while it is dynamic, and the lock
//! is taken for the rest (callsite registration, `enabled` for callsites the filter cannot
//! decide statically), which the callsite cache makes rare.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};
use tracing::{Metadata, Subscriber, span, subscriber::Interest};
use tracing_subscriber::{EnvFilter, filter::LevelFilter, layer::Context, registry::LookupSpan};

/// The filter in force and whether it looks at spans.
struct Current {
    filter: RwLock<EnvFilter>,
    dynamic: AtomicBool,
}

/// The layer that filters (installed once) …
pub(super) struct Switch(Arc<Current>);

/// … and what replaces its filter.
#[derive(Clone)]
pub(super) struct Handle(Arc<Current>);

/// Whether `directives` name spans or fields, which `EnvFilter` evaluates as spans come and go.
fn is_dynamic(directives: &str) -> bool {
    directives.contains('[')
}

/// A layer filtering by `directives` (already checked to parse), and its handle.
pub(super) fn new(directives: &str) -> (Switch, Handle) {
    let current = Arc::new(Current {
        filter: RwLock::new(EnvFilter::new(directives)),
        dynamic: AtomicBool::new(is_dynamic(directives)),
    });
    (Switch(current.clone()), Handle(current))
}

impl Handle {
    /// Puts `filter` (parsed from `directives`) in force and has every callsite asked again.
    pub(super) fn replace(&self, directives: &str, filter: EnvFilter) {
        {
            let mut slot = self
                .0
                .filter
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *slot = filter;
            self.0
                .dynamic
                .store(is_dynamic(directives), Ordering::Release);
        }
        // Outside the lock: rebuilding asks this layer about every callsite.
        tracing::callsite::rebuild_interest_cache();
    }
}

impl Switch {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, EnvFilter> {
        self.0
            .filter
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dynamic(&self) -> bool {
        self.0.dynamic.load(Ordering::Acquire)
    }
}

impl<S> tracing_subscriber::Layer<S> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        tracing_subscriber::Layer::<S>::register_callsite(&*self.read(), metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        tracing_subscriber::Layer::<S>::enabled(&*self.read(), metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        tracing_subscriber::Layer::<S>::max_level_hint(&*self.read())
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if self.dynamic() {
            tracing_subscriber::Layer::<S>::on_new_span(&*self.read(), attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if self.dynamic() {
            tracing_subscriber::Layer::<S>::on_record(&*self.read(), id, values, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.dynamic() {
            tracing_subscriber::Layer::<S>::on_enter(&*self.read(), id, ctx);
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.dynamic() {
            tracing_subscriber::Layer::<S>::on_exit(&*self.read(), id, ctx);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if self.dynamic() {
            tracing_subscriber::Layer::<S>::on_close(&*self.read(), id, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_span_and_field_directives_are_dynamic() {
        assert!(!is_dynamic("info"));
        assert!(!is_dynamic("warn,secflow_worker=debug,lapin=off"));
        assert!(is_dynamic("info,[task]=debug"));
        assert!(is_dynamic("secflow_worker[task{node=scan}]=trace"));
    }
}
