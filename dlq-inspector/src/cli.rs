//! The command line: the DLQ commands (which hold the DLQ) and the fleet-control commands
//! (which need only Redis and a short-lived broker connection for their event).

use crate::filter::{Filter, Selection};
use clap::{Args, Parser, Subcommand, ValueEnum};
use secflow_common::config::BrokerArgs;

/// SecFlow DLQ inspector and operator console. The DLQ commands hold the DLQ exclusively while
/// they work (a second inspector waits); the control commands never touch it.
#[derive(Parser)]
#[command(name = "dlq-inspector", version)]
pub struct Cli {
    /// Broker, Redis and namespace.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Seconds to wait for another inspector to release the DLQ.
    #[arg(long, global = true, default_value_t = 30)]
    pub lock_wait: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Which dead-lettered tasks a command acts on.
#[derive(Args, Clone, Debug, Default)]
pub struct Select {
    /// Task ids.
    pub ids: Vec<String>,
    /// KEY=VALUE (type, class, code, reason, run, queue, older, newer); repeat to AND them.
    #[arg(long = "filter")]
    pub filters: Vec<Filter>,
    /// Every dead-lettered task.
    #[arg(long)]
    pub all: bool,
}

impl From<Select> for Selection {
    fn from(s: Select) -> Self {
        Self {
            ids: s.ids,
            filters: s.filters,
            all: s.all,
        }
    }
}

/// How `requeue` paces its publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Pace {
    /// As fast as confirms come (or `--rate`), whatever the breakers say.
    #[default]
    None,
    /// Hold each task back while its service's breaker is open or held, or its type paused.
    Auto,
}

/// What a control command records about the change.
#[derive(Args, Clone, Debug, Default)]
pub struct Change {
    /// Why (recorded with the change and in its event).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who (default: $USER).
    #[arg(long, env = "USER", hide_env_values = true)]
    pub by: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `breaker` does to a service's breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BreakerAction {
    /// Hold it open (tasks are deferred) until `--for` elapses, else until closed.
    Open,
    /// Lift any hold and reset the shared state: a fresh, closed breaker.
    Close,
    /// Hold it disabled (tasks are deferred, never failed) until enabled.
    Disable,
    /// Lift the hold; the stored state decides again.
    Enable,
}

impl BreakerAction {
    /// The action's name in events and output (`breaker.open`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "breaker.open",
            Self::Close => "breaker.close",
            Self::Disable => "breaker.disable",
            Self::Enable => "breaker.enable",
        }
    }
}

/// Every command.
#[derive(Subcommand)]
pub enum Command {
    /// One line per dead-lettered task.
    List {
        /// KEY=VALUE (type, class, code, reason, run, queue, older, newer).
        #[arg(long = "filter")]
        filters: Vec<Filter>,
        /// Show at most N.
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one task: headers, x-death, body, error, timeline.
    Show {
        /// Task id.
        task_id: String,
        /// JSON.
        #[arg(long)]
        json: bool,
        /// Print secrets in task configs, inputs and headers as they are (default: masked);
        /// warns on stderr.
        #[arg(long)]
        unredacted: bool,
    },
    /// Republish tasks to where they came from (confirmed), then remove them from the DLQ.
    Requeue {
        #[command(flatten)]
        select: Select,
        /// Give the tasks a fresh retry budget.
        #[arg(long)]
        reset_retries: bool,
        /// Say what would be requeued, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many tasks per second (0 = no limit).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// `auto`: hold each task back while its service's breaker is open, half-open or held,
        /// or its type paused (reads Redis every 250 ms); the others go on.
        #[arg(long, value_enum, default_value_t = Pace::None)]
        pace: Pace,
        /// With `--pace auto`: how long to wait for held tasks (30s, 10m, 1h); those still held
        /// then stay in the DLQ and are reported.
        #[arg(long, default_value = "25m", value_parser = duration_ms)]
        max_wait: u64,
    },
    /// Remove tasks from the DLQ for good.
    Purge {
        #[command(flatten)]
        select: Select,
        /// Confirm the removal.
        #[arg(long)]
        yes: bool,
        /// First write them to this file (JSON lines, synced to disk before anything is removed).
        #[arg(long)]
        export: Option<String>,
        /// With `--export`: write secrets in task configs, inputs and headers as they are
        /// (default: masked), as a republish elsewhere needs them; warns on stderr.
        #[arg(long, requires = "export")]
        unredacted: bool,
    },
    /// Write tasks to a file as JSON lines, removing nothing.
    Export {
        /// Output file.
        #[arg(long)]
        out: String,
        /// KEY=VALUE filters.
        #[arg(long = "filter")]
        filters: Vec<Filter>,
        /// Write secrets in task configs, inputs and headers as they are (default: masked);
        /// warns on stderr.
        #[arg(long)]
        unredacted: bool,
    },
    /// Counts by class, type, origin queue and reason, and the oldest age.
    Stats {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every service with a stored breaker state or a hold.
    Breakers {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold a service's breaker open or disabled, or close it (lift the hold, reset the state).
    Breaker {
        /// open, close, disable or enable.
        #[arg(value_enum)]
        action: BreakerAction,
        /// The service (a task's `service`, else its type).
        service: String,
        /// With `open`: lift the hold by itself after this long (30s, 10m, 2h).
        #[arg(long = "for", value_parser = duration_ms, value_name = "DURATION")]
        for_ms: Option<u64>,
        #[command(flatten)]
        change: Change,
    },
    /// Pause a task type: its tasks are deferred, not run and not failed, until resumed.
    Pause {
        /// The task type (`scan.nuclei`).
        #[arg(value_name = "TYPE")]
        task_type: String,
        #[command(flatten)]
        change: Change,
    },
    /// Resume a paused task type.
    Resume {
        /// The task type.
        #[arg(value_name = "TYPE")]
        task_type: String,
        #[command(flatten)]
        change: Change,
    },
    /// The worker registry: every worker's pool, host, version, state, heartbeat, load.
    Workers {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the degradation level, or set it (full, high, medium, low, minimal) or hand it back
    /// to the fleet's controller (auto).
    Degrade {
        /// full, high, medium, low, minimal or auto; none shows it.
        #[arg(value_name = "LEVEL|auto")]
        level: Option<String>,
        #[command(flatten)]
        change: Change,
    },
    /// Read the audit trail back: every error, retry, dead letter, requeue, purge, breaker
    /// transition, operator and healing action, run and node event, in stored order.
    Audit {
        #[command(flatten)]
        filter: AuditFilter,
        /// Show at most N events.
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines, as the events were published.
        #[arg(long)]
        json: bool,
    },
    /// Follow the audit trail and send dead letters, security rejections, breaker openings,
    /// backlogs, unresponsive workers and error-rate anomalies to webhooks, deduplicated and
    /// rate limited; runs until SIGTERM or Ctrl-C.
    Notify(crate::notify::NotifyArgs),
    /// Error analytics from the audit trail over a window: errors per minute, by class and
    /// severity, top failures, recovery rate, mean time to recovery per service.
    Analytics {
        /// The window: the last 15m, 2h, 1d...
        #[arg(long, default_value = "1h", value_parser = duration_ms)]
        window: u64,
        /// How many of the most frequent failures to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the operator's web console (runs, DLQ, breakers, workers) and its JSON API.
    Serve(crate::console::ServeArgs),
}

/// Which audit events to show; every condition given must hold.
#[derive(Args, Clone, Debug, Default)]
pub struct AuditFilter {
    /// Events of this run.
    #[arg(long)]
    pub run: Option<uuid::Uuid>,
    /// Events of this task.
    #[arg(long)]
    pub task: Option<uuid::Uuid>,
    /// Events of this trace (32 hex digits).
    #[arg(long)]
    pub trace: Option<String>,
    /// Failures of this error class.
    #[arg(long)]
    pub class: Option<String>,
    /// This kind (`node.dead_lettered`), or kinds starting so when it ends in `.` (`breaker.`).
    #[arg(long)]
    pub kind: Option<String>,
    /// At least this severe: critical, high, medium, low.
    #[arg(long)]
    pub severity: Option<secflow_common::severity::Severity>,
    /// From: a duration ago (15m), ms since the epoch or UTC (2026-11-30T18:00:00Z).
    #[arg(long, value_parser = crate::trail::time_arg)]
    pub since: Option<u64>,
    /// Until, as --since.
    #[arg(long, value_parser = crate::trail::time_arg)]
    pub until: Option<u64>,
}

impl From<AuditFilter> for secflow_common::audit::Query {
    fn from(f: AuditFilter) -> Self {
        Self {
            since_ms: f.since,
            until_ms: f.until,
            run: f.run,
            task: f.task,
            trace: f.trace.map(|t| t.to_lowercase()),
            class: f.class,
            kind: f.kind,
            severity: f.severity,
        }
    }
}

impl Command {
    /// Whether the command works on the DLQ (and so takes its lock).
    pub fn uses_dlq(&self) -> bool {
        matches!(
            self,
            Self::List { .. }
                | Self::Show { .. }
                | Self::Requeue { .. }
                | Self::Purge { .. }
                | Self::Export { .. }
                | Self::Stats { .. }
        )
    }
}

/// A positive duration as people write it (`500ms`, `30s`, `10m`, `2h`, `7d`), in ms.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    match secflow_common::duration::parse_ms(s)? {
        0 => Err(format!("`{s}` is no time at all: give a positive duration")),
        ms => Ok(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_must_be_positive_and_well_formed() {
        assert_eq!(duration_ms("10m"), Ok(600_000));
        assert!(duration_ms("0s").unwrap_err().contains("positive"));
        assert!(duration_ms("5x").unwrap_err().contains("unit"));
    }

    #[test]
    fn only_dlq_commands_take_the_lock() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command.uses_dlq();
        assert!(parse(&["i", "stats"]));
        assert!(parse(&["i", "requeue", "--all", "--pace", "auto"]));
        assert!(!parse(&["i", "breakers"]));
        assert!(!parse(&["i", "breaker", "open", "nvd", "--for", "10m"]));
        assert!(!parse(&["i", "degrade"]));
        assert!(!parse(&["i", "serve", "--addr", "127.0.0.1:0"]));
        assert!(Cli::try_parse_from(["i", "breaker", "open"]).is_err());
        assert!(Cli::try_parse_from(["i", "breaker", "shut", "nvd"]).is_err());
    }

    #[test]
    fn unredacted_is_explicit_and_purge_needs_an_export_for_it() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        assert!(matches!(
            parse(&["i", "show", "t"]),
            Ok(Command::Show {
                unredacted: false,
                ..
            })
        ));
        assert!(matches!(
            parse(&["i", "export", "--out", "f", "--unredacted"]),
            Ok(Command::Export {
                unredacted: true,
                ..
            })
        ));
        assert!(parse(&["i", "purge", "--all", "--yes", "--unredacted"]).is_err());
        assert!(
            parse(&[
                "i",
                "purge",
                "--all",
                "--yes",
                "--export",
                "f",
                "--unredacted"
            ])
            .is_ok()
        );
    }
}
