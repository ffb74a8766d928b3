//! Reading a process's Prometheus metrics in tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// One scrape: series (name and labels, as printed) → value.
pub type Scrape = HashMap<String, f64>;

pub fn scrape(port: u16) -> Scrape {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The sum over series named `name` whose labels include each of `labels`
/// (`key="value"`).
pub fn sum(s: &Scrape, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}
