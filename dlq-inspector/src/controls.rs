//! The control commands: `breakers`, `breaker`, `pause`, `resume`, `workers`, `degrade`. They
//! read and change the fleet's controls in Redis (workers obey within a second), announce every
//! change as an `operator.action` event, and never touch the DLQ or its lock.

use crate::{
    InspectorError,
    announce::{self, Action},
    cli::{BreakerAction, Change, Command},
    control_view::{self, breaker_rows, relative, show, worker_rows},
    fleet::Fleet,
};
use secflow_common::{
    config::BrokerArgs,
    control::{BreakerHold, Controls, HoldMode, Level, LevelSetting, Pause},
    envelope::check_node_type,
    now_ms,
};
use serde_json::{Value, json};

/// Runs one control command.
pub async fn run(broker: &BrokerArgs, command: Command) -> Result<(), InspectorError> {
    broker.validate()?;
    let fleet = Fleet::open(broker)?;
    let now = now_ms();
    match command {
        Command::Breakers { json } => {
            let (rows, controls) = breaker_table(&fleet, now).await?;
            if json {
                println!(
                    "{}",
                    json!({"breakers": rows, "problems": controls.problems})
                );
            } else {
                print!("{}", control_view::breakers_text(&rows, now));
            }
            report_problems(&controls.problems);
        }
        Command::Breaker {
            action,
            service,
            for_ms,
            change,
        } => {
            let (reason, by) = who(&change);
            let (a, text) =
                breaker_change(&fleet, action, &service, for_ms, &reason, &by, now).await?;
            finish(broker, a, &text, change.json).await;
        }
        Command::Pause { task_type, change } => {
            pause(&fleet, broker, &task_type, change, true, now).await?
        }
        Command::Resume { task_type, change } => {
            pause(&fleet, broker, &task_type, change, false, now).await?
        }
        Command::Workers { json } => {
            let (records, problems) = fleet.workers().await?;
            let rows = worker_rows(records, now);
            let healing = fleet.healing().await?;
            let actions: serde_json::Map<String, serde_json::Value> = healing
                .actions
                .iter()
                .map(|(a, (taken, worked))| (a.clone(), json!({"taken": taken, "worked": worked})))
                .collect();
            let rate = healing.recovery_rate();
            if json {
                let healing = json!({"actions": actions, "recovery_rate": rate});
                println!(
                    "{}",
                    json!({"workers": rows, "problems": problems, "healing": healing})
                );
            } else {
                print!("{}", control_view::workers_text(&rows));
                if let Some(rate) = rate {
                    let each: Vec<String> = healing
                        .actions
                        .iter()
                        .map(|(a, (t, w))| format!("{a} {w}/{t}"))
                        .collect();
                    println!(
                        "healing: {:.0} % of actions worked ({})",
                        rate * 100.0,
                        each.join(", ")
                    );
                }
            }
            report_problems(&problems);
        }
        Command::Degrade { level, change } => degrade(&fleet, broker, level, change, now).await?,
        _ => {
            return Err(InspectorError::Usage(
                "not a control command: it needs the DLQ".into(),
            ));
        }
    }
    Ok(())
}

/// Every service with a stored breaker state or a hold in force at `now`, and the controls read.
pub async fn breaker_table(
    fleet: &Fleet,
    now: u64,
) -> Result<(Vec<control_view::BreakerRow>, Controls), InspectorError> {
    let controls = fleet.controls().await?;
    let services = fleet.breaker_services().await?;
    let stored = fleet.breaker_states(&services).await?;
    Ok((breaker_rows(&controls, &stored, now), controls))
}

/// `pause TYPE` (`pausing`) or `resume TYPE`.
async fn pause(
    fleet: &Fleet,
    broker: &BrokerArgs,
    task_type: &str,
    change: Change,
    pausing: bool,
    now: u64,
) -> Result<(), InspectorError> {
    let (reason, by) = who(&change);
    let (a, text) = pause_change(fleet, task_type, pausing, &reason, &by, now).await?;
    finish(broker, a, &text, change.json).await;
    Ok(())
}

/// Holds `service`'s breaker open (for `for_ms`, else until closed) or disabled, or lifts the
/// hold (`enable`; `close` also resets the stored state). The action to announce and a line
/// saying what is in force now. Nothing is announced here.
pub async fn breaker_change(
    fleet: &Fleet,
    action: BreakerAction,
    service: &str,
    for_ms: Option<u64>,
    reason: &str,
    by: &str,
    now: u64,
) -> Result<(Action, String), InspectorError> {
    check_service(service)?;
    if for_ms.is_some() && action != BreakerAction::Open {
        return Err(InspectorError::Usage(
            "--for applies to `breaker open` only (disable holds until enabled)".into(),
        ));
    }
    let (state, text) = match action {
        BreakerAction::Open | BreakerAction::Disable => {
            let mode = if action == BreakerAction::Open {
                HoldMode::Open
            } else {
                HoldMode::Disabled
            };
            let hold = BreakerHold {
                mode,
                until_ms: for_ms.map(|d| now.saturating_add(d)),
                reason: reason.to_string(),
                by: by.to_string(),
                at_ms: now,
            };
            fleet
                .call(
                    "holding the breaker",
                    fleet.store.hold_breaker(service, Some(&hold)),
                )
                .await?;
            let until = match (mode, hold.until_ms) {
                (HoldMode::Open, Some(u)) => format!("until {}", relative(u, now)),
                (HoldMode::Open, None) => "until closed".into(),
                (HoldMode::Disabled, _) => "until enabled".into(),
            };
            let what = if mode == HoldMode::Open {
                "held open"
            } else {
                "disabled"
            };
            (
                json!(hold),
                format!("breaker of {service} {what} {until}: its tasks are deferred"),
            )
        }
        BreakerAction::Close => {
            fleet
                .call("lifting the hold", fleet.store.hold_breaker(service, None))
                .await?;
            fleet
                .call(
                    "resetting the breaker state",
                    fleet.store.reset_breaker(service),
                )
                .await?;
            (
                Value::Null,
                format!(
                    "breaker of {service} closed: hold lifted, state reset to a fresh closed breaker"
                ),
            )
        }
        BreakerAction::Enable => {
            fleet
                .call("lifting the hold", fleet.store.hold_breaker(service, None))
                .await?;
            (
                Value::Null,
                format!(
                    "breaker of {service} enabled: hold lifted, its stored state decides again"
                ),
            )
        }
    };
    Ok((Action::now(action.name(), service, reason, by, state), text))
}

/// Pauses (`pausing`) or resumes `task_type`. The action to announce and what is in force.
pub async fn pause_change(
    fleet: &Fleet,
    task_type: &str,
    pausing: bool,
    reason: &str,
    by: &str,
    now: u64,
) -> Result<(Action, String), InspectorError> {
    check_node_type(task_type).map_err(InspectorError::Usage)?;
    let (action, state, text) = if pausing {
        let p = Pause {
            reason: reason.to_string(),
            by: by.to_string(),
            at_ms: now,
        };
        fleet
            .call("pausing the type", fleet.store.pause(task_type, Some(&p)))
            .await?;
        (
            "pause",
            json!(p),
            format!("type {task_type} paused: its tasks are deferred until resumed"),
        )
    } else {
        fleet
            .call("resuming the type", fleet.store.pause(task_type, None))
            .await?;
        ("resume", Value::Null, format!("type {task_type} resumed"))
    };
    Ok((Action::now(action, task_type, reason, by, state), text))
}

/// `degrade` (show), `degrade LEVEL` (an operator's level) or `degrade auto` (back to the
/// fleet's controller, from the level in force).
async fn degrade(
    fleet: &Fleet,
    broker: &BrokerArgs,
    level: Option<String>,
    change: Change,
    now: u64,
) -> Result<(), InspectorError> {
    let current = fleet.controls().await?;
    let Some(wanted) = level else {
        if change.json {
            println!("{}", json!(current.level));
        } else {
            print!("{}", control_view::level_text(&current.level, now));
        }
        report_problems(&current.problems);
        return Ok(());
    };
    let (reason, by) = who(&change);
    let (a, text) = level_change(fleet, &current.level, &wanted, &reason, &by, now).await?;
    finish(broker, a, &text, change.json).await;
    Ok(())
}

/// Sets the degradation level (`full` .. `minimal`) or hands it back to the fleet's controller
/// (`auto`, from `current`). The action to announce and what is in force.
pub async fn level_change(
    fleet: &Fleet,
    current: &LevelSetting,
    wanted: &str,
    reason: &str,
    by: &str,
    now: u64,
) -> Result<(Action, String), InspectorError> {
    let (level, auto) = parse_level(wanted).map_err(InspectorError::Usage)?;
    let setting = LevelSetting {
        level: level.unwrap_or(current.level),
        auto,
        reason: reason.to_string(),
        by: by.to_string(),
        at_ms: now,
    };
    fleet
        .call("setting the level", fleet.store.set_level(&setting))
        .await?;
    let text = format!(
        "level {} ({})",
        setting.level,
        if auto {
            "auto: the fleet's controller moves it from here"
        } else {
            "manual"
        }
    );
    Ok((
        Action::now("degrade", "fleet", reason, by, json!(setting)),
        text,
    ))
}

/// `auto` → (none, auto); a level name → (that level, manual).
pub fn parse_level(s: &str) -> Result<(Option<Level>, bool), String> {
    if s == "auto" {
        return Ok((None, true));
    }
    s.parse::<Level>()
        .map(|l| (Some(l), false))
        .map_err(|e| format!("{e}, or auto"))
}

/// Prints what changed and announces it; a failed announcement is reported, the change stands.
async fn finish(broker: &BrokerArgs, a: Action, text: &str, json: bool) {
    let published = announce::announce(broker, &a).await;
    if json {
        let mut out = a.summary();
        out["event_published"] = json!(published.is_ok());
        out["event_error"] = json!(published.as_ref().err());
        println!("{out}");
    } else {
        println!("{text} (by {}: {})", a.by, show(&a.reason));
    }
    if let Err(e) = published {
        eprintln!(
            "warning: the change stands, but its {} event could not be published: {e}",
            announce::KIND
        );
    }
}

/// The reason and the operator of a change.
fn who(change: &Change) -> (String, String) {
    let by = change
        .by
        .clone()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    (change.reason.clone().unwrap_or_default(), by)
}

/// A service name usable in a breaker key: 1 to 200 visible characters, no braces.
pub fn check_service(service: &str) -> Result<(), InspectorError> {
    let ok = !service.is_empty()
        && service.chars().count() <= 200
        && !service
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}');
    if ok {
        Ok(())
    } else {
        Err(InspectorError::Usage(format!(
            "`{}` is not a service name: give the task's `service` (or its type), 1 to 200 characters without spaces or braces",
            service.escape_default()
        )))
    }
}

fn report_problems(problems: &[String]) {
    for p in problems {
        eprintln!("warning: ignored an unreadable entry: {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_services_are_checked() {
        assert_eq!(parse_level("auto"), Ok((None, true)));
        assert_eq!(parse_level("low"), Ok((Some(Level::Low), false)));
        let e = parse_level("lowest").unwrap_err();
        assert!(
            e.contains("unknown degradation level `lowest`") && e.ends_with("or auto"),
            "{e}"
        );
        assert!(check_service("nvd.api").is_ok());
        for bad in ["", "a b", "x}y", "{x"] {
            assert!(check_service(bad).is_err(), "{bad}");
        }
    }
}
