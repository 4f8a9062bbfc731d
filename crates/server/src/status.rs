//! `shortlinks status` as text: a report ([`StatusReport`]) laid out for a terminal.
//! Pure formatting, so that its shape is tested without a store.

use std::fmt::Write;
use std::path::Path;

use crate::admin::StatusReport;
use crate::config::StorageSettings;

/// The report as lines of text, ages counted back from now.
pub fn render(report: &StatusReport, storage: &StorageSettings, data_dir: &Path) -> String {
    render_at(report, storage, data_dir, shortlinks_core::Timestamp::now().as_secs())
}

/// [`render`], at `now` (Unix seconds).
pub fn render_at(report: &StatusReport, storage: &StorageSettings, data_dir: &Path, now: u64) -> String {
    let mut out = String::new();
    let store = match storage {
        StorageSettings::Sled => format!("sled at {}", data_dir.display()),
        StorageSettings::Redis(_) => "Redis (every node's queues)".to_owned(),
    };
    let whose = match report.server {
        Some(_) => "from the running server",
        None => "from the store; no server answered here",
    };
    let _ = writeln!(out, "shortlinks status: {store}, {whose}");
    let _ = writeln!(out, "\n{:<28} {:>10}  oldest", "queue", "entries");
    for q in &report.queues {
        let oldest = q.oldest_ms.map_or_else(|| "-".to_owned(), age);
        let _ = writeln!(out, "{:<28} {:>10}  {oldest}", q.queue, q.entries);
    }
    if !report.connections.is_empty() {
        let _ = writeln!(out, "\namoCRM connections");
        for c in &report.connections {
            let since = c.since.map(|s| format!(" for {}", age(now.saturating_sub(s) * 1000))).unwrap_or_default();
            let until =
                c.until.map(|u| format!(" (another {})", age(u.saturating_sub(now) * 1000))).unwrap_or_default();
            let token = match c.token_expires {
                Some(t) if t > now => format!(", token expires in {}", age((t - now) * 1000)),
                Some(_) => ", token expired".to_owned(),
                None => String::new(),
            };
            let delivered = c.delivered.map(|d| format!(", {d} delivered here")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  account {:<8} {}: {}{since}{until}, {} waiting, {} dead letters{delivered}{token}",
                c.account,
                c.amocrm.as_deref().unwrap_or("(settings)"),
                c.state,
                c.backlog,
                c.dead_letters,
            );
        }
    }
    if let Some(server) = &report.server {
        let p = &server.pipeline;
        let _ = writeln!(out, "\nthis server, up {}", age(p.uptime_secs * 1000));
        let redirects = server.redirects_lane + server.redirects_hyper;
        let (lane, hyper) = (server.redirects_lane, server.redirects_hyper);
        let _ = writeln!(out, "  redirects   {redirects} (lane {lane}, hyper {hyper})");
        let _ = writeln!(
            out,
            "  clicks      {} recorded, {} screened, {} dispatched",
            p.clicks_recorded, p.clicks_screened, p.clicks_dispatched
        );
        let _ = writeln!(out, "  notes       {} written, {} repeat visits", p.notes_written, p.repeats);
        let reasons: Vec<String> = p.not_visits.iter().map(|(why, n)| format!("{why} {n}")).collect();
        let reasons = if reasons.is_empty() { "none".to_owned() } else { reasons.join(", ") };
        let _ = writeln!(out, "  not visits  {reasons}");
        for s in &p.sinks {
            let _ = writeln!(
                out,
                "  sink {}: {}, {} delivered, {} failed attempts, {} refused for good",
                s.label, s.state, s.delivered, s.failed_attempts, s.dead_lettered
            );
        }
    }
    out
}

/// A duration in milliseconds, in its two largest units.
pub(crate) fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{}.{} s", s, ms % 1000 / 100),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_notes::backlog::QueueBacklog;
    use shortlinks_notes::sink::amocrm::status::ConnectionStatus;
    use shortlinks_notes::stats::{SinkSummary, Summary};

    use super::*;
    use crate::admin::ServerFigures;

    #[test]
    fn ages_read_in_their_two_largest_units() {
        assert_eq!(age(850), "850 ms");
        assert_eq!(age(3_250), "3.2 s");
        assert_eq!(age(250_000), "4 min 10 s");
        assert_eq!(age(7_500_000), "2 h 5 min");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
    }

    #[test]
    fn a_report_shows_every_queue_connection_and_the_servers_figures() {
        let queue = |name: &str, entries, oldest_ms| QueueBacklog { queue: name.into(), entries, oldest_ms };
        let report = StatusReport {
            queues: vec![queue("clicks", 12, Some(3_250)), queue("dead:amocrm:7", 2, None)],
            connections: vec![ConnectionStatus {
                account: 7,
                amocrm: Some("acme (https://acme.amocrm.ru)".into()),
                state: "paused".into(),
                since: Some(1_000),
                until: Some(1_900),
                backlog: 40,
                dead_letters: 2,
                token_expires: Some(1_000 + 86_400),
                delivered: Some(5),
            }],
            server: Some(ServerFigures {
                pipeline: Summary {
                    uptime_secs: 3_720,
                    clicks_recorded: 100,
                    clicks_screened: 10,
                    clicks_dispatched: 90,
                    notes_written: 80,
                    repeats: 5,
                    not_visits: vec![("preview".into(), 10)],
                    sinks: vec![SinkSummary {
                        label: "amocrm:7".into(),
                        state: "paused".into(),
                        delivered: 5,
                        failed_attempts: 1,
                        dead_lettered: 2,
                        last_errors: vec![(1_200, "503: busy".into())],
                    }],
                },
                redirects_lane: 95,
                redirects_hyper: 5,
            }),
        };
        let text = render_at(&report, &StorageSettings::Sled, Path::new("/srv/links"), 1_300);
        let expected = [
            "shortlinks status: sled at /srv/links, from the running server",
            "clicks                               12  3.2 s",
            "dead:amocrm:7                         2  -",
            "  account 7        acme (https://acme.amocrm.ru): paused for 5 min 0 s (another 10 min 0 s), 40 waiting, 2 dead letters, 5 delivered here, token expires in 23 h 55 min",
            "this server, up 1 h 2 min",
            "  redirects   100 (lane 95, hyper 5)",
            "  clicks      100 recorded, 10 screened, 90 dispatched",
            "  notes       80 written, 5 repeat visits",
            "  not visits  preview 10",
            "  sink amocrm:7: paused, 5 delivered, 1 failed attempts, 2 refused for good",
        ];
        for line in expected {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }
}
