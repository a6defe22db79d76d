//! Waiting for services before the app starts: every target probed in parallel with
//! the same code as `healthcheck`, retried with a short, capped, jittered backoff (25 ms
//! doubling to 1 s, ±25 %), all under one timeout. Transient failures (refused, name not
//! resolvable yet, "the database system is starting up", too many connections) keep
//! waiting; permanent ones (wrong password, missing database, TLS) stop at once with
//! the server's message. Waiting ends with a [`NetError`]: permanent when a target
//! failed for good, transient when time ran out. Every 5 s a log line says what is still awaited and why.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use tracing::info;

use crate::duration;
use crate::jitter::Jitter;
use crate::net::{self, NetError};
use crate::probe::{self, HttpOptions, Target};

const FIRST_RETRY: Duration = Duration::from_millis(25);
const MAX_RETRY: Duration = Duration::from_secs(1);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
enum State {
    Waiting(String),
    Ready,
    Failed(String),
}

/// Waits until every target is healthy, or fails at the first permanent error or when
/// `timeout` runs out.
pub async fn wait_all(
    targets: &[Target],
    http: &HttpOptions,
    timeout: Duration,
) -> Result<(), NetError> {
    if targets.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let states: Vec<RefCell<State>> = targets
        .iter()
        .map(|_| RefCell::new(State::Waiting("not tried yet".into())))
        .collect();
    let names: Vec<String> = targets.iter().map(|t| t.url().to_string()).collect();
    let failed = tokio::sync::Notify::new();
    let waits = probe::join_all(
        targets
            .iter()
            .zip(&states)
            .map(|(t, st)| wait_one(t, http, deadline, st, &failed))
            .collect(),
    );
    let progress = async {
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let pending: Vec<String> = names
                .iter()
                .zip(&states)
                .filter_map(|(n, st)| match &*st.borrow() {
                    State::Waiting(why) => Some(format!("{n} ({why})")),
                    _ => None,
                })
                .collect();
            info!(
                "still waiting after {} for: {}",
                duration::format(Duration::from_secs(started.elapsed().as_secs())),
                pending.join(", ")
            );
        }
    };
    tokio::select! {
        _ = waits => {}
        _ = failed.notified() => {}
        _ = progress => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }
    let mut problems = Vec::new();
    let mut permanent = false;
    for (n, st) in names.iter().zip(&states) {
        match &*st.borrow() {
            State::Ready => {}
            State::Failed(why) => {
                permanent = true;
                problems.push(format!("{n}: {why}"));
            }
            State::Waiting(why) => problems.push(format!("{n}: {why}")),
        }
    }
    if problems.is_empty() {
        info!(
            "ready after {}: {}",
            duration::format(started.elapsed()),
            names.join(", ")
        );
        return Ok(());
    }
    Err(if permanent {
        net::permanent(format!("{} (waiting cannot fix this)", problems.join("; ")))
    } else {
        net::transient(format!(
            "gave up waiting after {}: {}",
            duration::format(timeout),
            problems.join("; ")
        ))
    })
}

async fn wait_one(
    target: &Target,
    http: &HttpOptions,
    deadline: tokio::time::Instant,
    state: &RefCell<State>,
    failed: &tokio::sync::Notify,
) {
    let mut delay = FIRST_RETRY;
    let mut jitter = Jitter::new();
    loop {
        let attempt_deadline = deadline.min(tokio::time::Instant::now() + ATTEMPT_TIMEOUT);
        let report = probe::probe(target, http, attempt_deadline).await;
        match report.outcome {
            Ok(_) => {
                *state.borrow_mut() = State::Ready;
                return;
            }
            Err(f) if f.is_permanent() => {
                *state.borrow_mut() = State::Failed(f.message().to_string());
                failed.notify_one();
                return;
            }
            Err(f) => {
                // A timed-out attempt says less than the error before it: keep both.
                let mut st = state.borrow_mut();
                let reason = match &*st {
                    State::Waiting(prev)
                        if f.message().starts_with("timed out")
                            && !prev.starts_with("timed out")
                            && prev != "not tried yet" =>
                    {
                        let cause = prev.split(" (last error: ").next().unwrap_or(prev);
                        format!("{} (last error: {cause})", f.message())
                    }
                    State::Waiting(prev)
                        if f.message().starts_with("timed out")
                            && prev.contains(" (last error: ") =>
                    {
                        let cause = prev
                            .split(" (last error: ")
                            .nth(1)
                            .unwrap_or("")
                            .trim_end_matches(')');
                        format!("{} (last error: {cause})", f.message())
                    }
                    _ => f.message().to_string(),
                };
                *st = State::Waiting(reason);
            }
        }
        tokio::time::sleep(jitter.apply(delay)).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}
