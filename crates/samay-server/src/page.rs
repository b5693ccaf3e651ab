//! `GET /` and `GET /events`: self-contained HTML (no scripts, styles or resources from
//! elsewhere) so a demo can show "the events arrived" in a browser without any tooling — the
//! summary per device and bucket, and the events themselves.
//!
//! The counters say what they count: the database's stored batches are every batch any run of
//! the server ever stored in it (a `--dev --once` that ended long ago included), while the
//! requests received and batches stored *since this server started* (shown with the `faults`
//! feature, which keeps them) are this process's. Side by side without that, "11 batches stored;
//! 0 batch requests received" read as a contradiction.

use std::fmt::Write;

use super::store::{Inspect, StoredEvent};

/// How many events `GET /events` shows by default, and at most.
pub(crate) const EVENTS_SHOWN: u32 = 100;
pub(crate) const MAX_EVENTS_SHOWN: u32 = 10_000;

/// A link to the events page, filtered.
fn events_link(device_id: Option<&str>, bucket_id: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(d) = device_id {
        query.append_pair("device_id", d);
    }
    if let Some(b) = bucket_id {
        query.append_pair("bucket_id", b);
    }
    let query = query.finish();
    if query.is_empty() {
        "/events".into()
    } else {
        format!("/events?{query}")
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}td.n{text-align:right}code{white-space:pre-wrap;word-break:break-all}";

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    format!(
        "<!doctype html>
<html><head><meta charset=\"utf-8\">{refresh}
<title>{title}</title>
<style>{STYLE}</style>
</head><body>
{body}</body></html>
",
        title = escape(title)
    )
}

/// `note`: HTML the fault switches add (their counters and endpoint), empty without them.
pub(crate) fn render(summary: &Inspect, note: &str) -> String {
    let mut rows = String::new();
    for device in &summary.devices {
        for bucket in &device.buckets {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">{}</a></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&device.device_id),
                escape(&device.hostname),
                escape(&device.user),
                escape(&events_link(Some(&device.device_id), Some(&bucket.bucket_id))),
                escape(&bucket.bucket_id),
                bucket.events,
                bucket.versions_replaced,
                bucket.duplicates
            );
        }
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"7\">nothing stored yet</td></tr>");
    }
    let body = format!(
        "<h1>samay-dev-server</h1>
<p>This database holds {batches} stored batch(es), from every run of the server on it.{note}</p>
<p>Events: <a href=\"/events\">the newest</a>, or a bucket's below. JSON: <a href=\"/v1/inspect\">/v1/inspect</a>, <a href=\"/v1/inspect/events\">/v1/inspect/events</a>.</p>
<table><tr><th>device</th><th>hostname</th><th>user</th><th>bucket</th><th>events</th><th>versions replaced</th><th>duplicates</th></tr>
{rows}
</table>
",
        batches = summary.batches,
    );
    page("samay-dev-server", true, &body)
}

/// `GET /events`: the newest stored events (of a device and bucket, when given), newest first,
/// with their data as JSON text.
pub(crate) fn render_events(
    events: &[StoredEvent],
    device_id: Option<&str>,
    bucket_id: Option<&str>,
    limit: u32,
) -> String {
    let mut rows = String::new();
    for e in events {
        let data = serde_json::to_string(&e.data).unwrap_or_default();
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
            escape(&e.device_id),
            escape(&e.bucket_id),
            e.event_id,
            escape(&e.timestamp),
            e.duration,
            escape(&data),
            e.versions
        );
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"7\">no events</td></tr>");
    }
    let which = match (device_id, bucket_id) {
        (_, Some(b)) => format!("bucket {}", escape(b)),
        (Some(d), None) => format!("device {}", escape(d)),
        (None, None) => "all buckets".into(),
    };
    let body = format!(
        "<h1>Events: {which}</h1>
<p>The newest {shown} (at most {limit}; <code>?limit=</code> up to {MAX_EVENTS_SHOWN}), newest first. <a href=\"/\">Back to the summary</a>; as JSON: <a href=\"{json}\">/v1/inspect/events</a>.</p>
<table><tr><th>device</th><th>bucket</th><th>event id</th><th>timestamp</th><th>duration (s)</th><th>data</th><th>versions</th></tr>
{rows}
</table>
",
        shown = events.len(),
        json = escape(&events_link(device_id, bucket_id).replacen("/events", "/v1/inspect/events", 1)),
    );
    page("samay-dev-server: events", false, &body)
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_shown_as_html_escaped() {
        let e = StoredEvent {
            user: "alice".into(),
            device_id: "d1".into(),
            bucket_id: "aw-watcher-window_<host>".into(),
            event_id: 7,
            hash: "h".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            duration: 5.5,
            data: json!({"title": "<script>alert(1)</script>"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            versions: 2,
        };
        let html = render_events(&[e], Some("d1"), Some("aw-watcher-window_<host>"), 100);
        assert!(html.contains("<table>"), "{html}");
        assert!(
            html.contains("bucket aw-watcher-window_&lt;host&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("<td class=\"n\">5.5</td>"), "{html}");
        assert!(
            html.contains(
                "/v1/inspect/events?device_id=d1&amp;bucket_id=aw-watcher-window_%3Chost%3E"
            ),
            "{html}"
        );
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
