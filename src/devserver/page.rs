//! `GET /`: a self-contained HTML summary (no scripts, styles or resources from elsewhere) so a
//! demo can show "the events arrived" in a browser without any tooling.

use std::fmt::Write;

use super::faults::FaultReport;
use super::store::Inspect;

pub(crate) fn render(summary: &Inspect, faults: &FaultReport) -> String {
    let mut rows = String::new();
    for device in &summary.devices {
        for bucket in &device.buckets {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&device.device_id),
                escape(&device.hostname),
                escape(&device.user),
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
    format!(
        "<!doctype html>
<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">
<title>samay-dev-server</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}td:nth-child(n+5){{text-align:right}}</style>
</head><body>
<h1>samay-dev-server</h1>
<p>{batches} batch(es) stored; {received} batch request(s) received. JSON: <a href=\"/v1/inspect\">/v1/inspect</a>, <a href=\"/v1/inspect/events\">/v1/inspect/events</a>, <a href=\"/v1/_faults\">/v1/_faults</a>.</p>
<table><tr><th>device</th><th>hostname</th><th>user</th><th>bucket</th><th>events</th><th>versions replaced</th><th>duplicates</th></tr>
{rows}
</table></body></html>
",
        batches = summary.batches,
        received = faults.counters.requests_received,
    )
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
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
