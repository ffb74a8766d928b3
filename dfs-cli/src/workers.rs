//! `dfs workers`, the words `dfs status` says about what needs attention,
//! and progress shown while `dfs gc` and `dfs fsck` run (issue 20).

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use dfs_proto::meta_client::MetaClient;
use dfs_proto::{Empty, WorkerStatus};
use serde::Serialize;

/// One worker, as `dfs workers --json` prints it.
#[derive(Serialize, Debug, Clone)]
pub struct WorkerRow {
    pub process: String,
    pub name: String,
    pub state: String,
    pub done: u64,
    /// 0: not known.
    pub total: u64,
    pub unit: String,
    pub runs: u64,
    pub last_run_age_s: Option<f64>,
    pub next_run_in_s: Option<f64>,
    pub throttle: String,
    pub summary: String,
    pub last_error: String,
    /// How old this status is: a chunk server's comes with its heartbeat.
    pub reported_age_s: f64,
}

fn age_s(ns: i64, now: i64) -> f64 {
    now.saturating_sub(ns).max(0) as f64 / 1e9
}

impl WorkerRow {
    pub fn new(w: WorkerStatus, now: i64) -> Self {
        Self {
            process: w.process,
            name: w.name,
            state: w.state,
            done: w.done,
            total: w.total,
            unit: w.unit,
            runs: w.runs,
            last_run_age_s: (w.last_run_ns > 0).then(|| age_s(w.last_run_ns, now)),
            next_run_in_s: (w.next_run_ns > 0)
                .then(|| w.next_run_ns.saturating_sub(now).max(0) as f64 / 1e9),
            throttle: w.throttle,
            summary: w.summary,
            last_error: w.last_error,
            reported_age_s: age_s(w.reported_ns, now),
        }
    }

    fn progress(&self) -> String {
        match (self.state.as_str(), self.total) {
            ("idle", _) | ("failed", _) if self.runs > 0 => String::new(),
            (_, 0) => format!("{} {}", self.done, self.unit),
            (_, total) => format!(
                "{}/{} {} ({:.0}%)",
                self.done,
                total,
                self.unit,
                100.0 * self.done as f64 / total.max(1) as f64
            ),
        }
    }
}

/// Every worker of the cluster.
pub async fn fetch<T>(client: &mut MetaClient<T>) -> Result<Vec<WorkerRow>, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let now = dfs_core::time::now_ns();
    Ok(client
        .workers(Empty {})
        .await?
        .into_inner()
        .workers
        .into_iter()
        .map(|w| WorkerRow::new(w, now))
        .collect())
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.0}s"))
}

pub fn print(rows: &[WorkerRow]) {
    println!(
        "{:<34} {:<13} {:<10} {:<28} {:>8} {:>8}  note",
        "process", "worker", "state", "progress", "last run", "next in"
    );
    for r in rows {
        let note = if !r.last_error.is_empty() {
            format!("error: {}", r.last_error)
        } else {
            r.summary.clone()
        };
        let throttle = if r.throttle.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.throttle)
        };
        println!(
            "{:<34} {:<13} {:<10} {:<28} {:>8} {:>8}  {note}{throttle}",
            r.process,
            r.name,
            r.state,
            r.progress(),
            secs(r.last_run_age_s),
            secs(r.next_run_in_s),
        );
    }
}

/// A chunk server's worker status older than this: its heartbeats stopped.
const STALE_AFTER_S: f64 = 60.0;

/// What needs attention among the workers, in words.
pub fn attention(rows: &[WorkerRow]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in rows {
        if r.state == "failed" {
            lines.push(format!(
                "worker {} of {} failed its last run: {} (it runs again {}; its log says more)",
                r.name,
                r.process,
                r.last_error,
                r.next_run_in_s
                    .map_or("when asked".to_string(), |s| format!("in {s:.0}s"))
            ));
        }
        if r.reported_age_s > STALE_AFTER_S && r.process.starts_with("dfs-server") {
            lines.push(format!(
                "{} has not reported its {} worker for {:.0}s: is it down?",
                r.process, r.name, r.reported_age_s
            ));
        }
    }
    lines
}

/// Runs `request` (a `dfs gc` or `dfs fsck`), showing the progress of
/// the dfs-meta worker `name` meanwhile: a bar on a terminal, a plain
/// line every few seconds otherwise (after the first second). `poll` is a
/// second connection to ask for worker states on.
pub async fn with_progress<R, T>(
    name: &str,
    mut poll: Option<MetaClient<T>>,
    request: impl Future<Output = R>,
) -> R
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let started = Instant::now();
    let mut last_line = started;
    tokio::pin!(request);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            result = &mut request => break result,
            _ = tick.tick() => {}
        }
        let Some(client) = poll.as_mut() else {
            continue;
        };
        let Ok(rows) = fetch(client).await else {
            // An older dfs-meta, or a certificate without the admin role:
            // no progress to show, the request goes on.
            poll = None;
            continue;
        };
        let Some(w) = rows
            .iter()
            .find(|r| r.name == name && r.process.starts_with("dfs-meta"))
        else {
            continue;
        };
        match &bar {
            Some(bar) => {
                bar.set_length(w.total.max(w.done));
                bar.set_position(w.done);
                bar.set_message(format!("{} ({})", w.unit, w.state));
            }
            None => {
                let every = Duration::from_secs(5);
                if started.elapsed() >= Duration::from_secs(1) && last_line.elapsed() >= every {
                    last_line = Instant::now();
                    eprintln!(
                        "{name}: {} ({}) after {:.0}s",
                        w.progress(),
                        w.state,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, process: &str) -> WorkerStatus {
        WorkerStatus {
            name: "gc".into(),
            process: process.into(),
            state: state.into(),
            done: 5,
            total: 20,
            unit: "chunks".into(),
            last_error: if state == "failed" {
                "server 3 unreachable".into()
            } else {
                String::new()
            },
            runs: 1,
            reported_ns: 1_000_000_000,
            next_run_ns: 61_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn failed_and_silent_workers_need_attention() {
        let now = 1_000_000_000;
        let ok = WorkerRow::new(status("busy", "dfs-meta"), now);
        assert_eq!(ok.progress(), "5/20 chunks (25%)");
        assert!(attention(&[ok]).is_empty());
        let failed = WorkerRow::new(status("failed", "dfs-meta"), now);
        let lines = attention(&[failed]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("server 3 unreachable") && lines[0].contains("in 60s"));
        let silent = WorkerRow::new(
            status("idle", "dfs-server 4 127.0.0.1:7104"),
            200_000_000_000,
        );
        assert!(attention(&[silent])[0].contains("is it down?"));
    }
}
