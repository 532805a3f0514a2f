//! Settings of the fleet's self-healing: the memory watchdog and the controller that moves the
//! degradation level and watches queues and workers.

use super::signals::Thresholds;

/// Self-healing and degradation settings.
#[derive(clap::Args, Clone, Debug)]
pub struct FleetArgs {
    /// Above this resident memory (MiB) the worker stops taking work, finishes or hands back
    /// what it has and exits 0 for its supervisor to restart it. 0: no limit.
    #[arg(long, env = "SECFLOW_MAX_RSS_MB", default_value_t = 0)]
    pub max_rss_mb: u64,
    /// Failed share of settled tasks over the window that lowers the degradation level.
    #[arg(long, env = "SECFLOW_DEGRADE_ERROR_RATE", default_value_t = 0.10)]
    pub degrade_error_rate: f64,
    /// Fewer settled tasks than this in the window say nothing about the error rate.
    #[arg(long, env = "SECFLOW_DEGRADE_MIN_TASKS", default_value_t = 20)]
    pub degrade_min_tasks: u64,
    /// Window of the error and processing rates, seconds.
    #[arg(long, env = "SECFLOW_DEGRADE_WINDOW", default_value_t = 60)]
    pub degrade_window_secs: u64,
    /// Shortest time between two steps down, seconds.
    #[arg(long, env = "SECFLOW_DEGRADE_STEP", default_value_t = 15)]
    pub degrade_step_secs: u64,
    /// Calm needed before each step back up, seconds.
    #[arg(long, env = "SECFLOW_DEGRADE_RECOVER", default_value_t = 60)]
    pub degrade_recover_secs: u64,
    /// A queue that would take longer than this to drain at the measured rate is backlogged
    /// (`queue.backlog` event), seconds.
    #[arg(long, env = "SECFLOW_BACKLOG_SECS", default_value_t = 300)]
    pub backlog_secs: u64,
    /// Never act as the fleet's controller (level, backlog, unresponsive workers); other
    /// workers of the namespace do.
    #[arg(long, env = "SECFLOW_NO_CONTROLLER")]
    pub no_controller: bool,
}

impl Default for FleetArgs {
    fn default() -> Self {
        Self {
            max_rss_mb: 0,
            degrade_error_rate: 0.10,
            degrade_min_tasks: 20,
            degrade_window_secs: 60,
            degrade_step_secs: 15,
            degrade_recover_secs: 60,
            backlog_secs: 300,
            no_controller: false,
        }
    }
}

impl FleetArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.degrade_error_rate > 0.0 && self.degrade_error_rate <= 1.0) {
            return Err("--degrade-error-rate must be above 0 and at most 1 (0.10 = 10 %)".into());
        }
        if self.degrade_window_secs == 0 || self.degrade_step_secs == 0 || self.backlog_secs == 0 {
            return Err(
                "--degrade-window, --degrade-step and --backlog-secs must be at least 1 second"
                    .into(),
            );
        }
        Ok(())
    }

    /// The controller's thresholds.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            error_rate: self.degrade_error_rate,
            min_outcomes: self.degrade_min_tasks,
            window_ms: self.degrade_window_secs * 1000,
            step_ms: self.degrade_step_secs * 1000,
            recover_ms: self.degrade_recover_secs * 1000,
            backlog_secs: self.backlog_secs as f64,
        }
    }
}
