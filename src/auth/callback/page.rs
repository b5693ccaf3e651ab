//! What the browser tab (or the deep-link process) is told. Every page is self-contained — inline
//! CSS, no scripts, images, fonts or links — so the page that carries the authorization code in
//! its URL loads nothing from anywhere and can leak it nowhere (RFC 9700 §4.2.4), and everything
//! taken from the request is HTML-escaped.

use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The page's security headers: never cached (it answers a URL with a code in it), never sent as
/// a referrer, nothing but its own inline style may load, and it may not be framed.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
];

/// The login command, with the flags of the login that is running (see [`crate::hint`]).
fn login() -> String {
    crate::hint::command("--login")
}

#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    title: String,
    message: String,
    hint: Option<String>,
    /// The login is over after this page: close the connection (no keep-alive lingering).
    last: bool,
    allow_get_only: bool,
    /// The sign-in ended without tokens (declined, or failed after the callback).
    refusal: bool,
}

impl Page {
    fn new(status: StatusCode, title: &str, message: String, hint: Option<String>) -> Self {
        Self {
            status,
            title: title.to_string(),
            message,
            hint,
            last: false,
            allow_get_only: false,
            refusal: false,
        }
    }

    fn last(mut self) -> Self {
        self.last = true;
        self
    }

    fn refusal(mut self) -> Self {
        self.refusal = true;
        self
    }

    pub(crate) fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// Whether the login took the response and did not end in a refusal: signed in, or
    /// received without a verdict yet. A declined or failed sign-in is shown with status 200
    /// (a page the browser displays normally) but is not "ok" to the `--callback` process.
    #[cfg(unix)]
    pub(crate) fn is_accepted(&self) -> bool {
        self.status.is_success() && !self.refusal
    }

    pub(crate) fn signed_in(username: &str) -> Self {
        Page::new(
            StatusCode::OK,
            "Signed in",
            format!("Signed in as {username}. You can close this tab and return to aw-sync-samay."),
            None,
        )
        .last()
    }

    pub(crate) fn failed(message: &str, hint: Option<&str>) -> Self {
        Page::new(
            StatusCode::OK,
            "Sign-in failed",
            message.to_string(),
            Some(hint.map_or_else(
                || format!("Run `{}` again to retry.", login()),
                str::to_string,
            )),
        )
        .last()
        .refusal()
    }

    /// The hold ran out, or the login went away without saying how it ended.
    pub(crate) fn received() -> Self {
        Page::new(
            StatusCode::OK,
            "Sign-in received",
            "aw-sync-samay received the sign-in response. You can close this tab; the terminal shows whether the sign-in succeeded.".into(),
            None,
        )
        .last()
    }

    pub(crate) fn foreign() -> Self {
        Page::new(
            StatusCode::BAD_REQUEST,
            "Not this sign-in",
            "This sign-in response does not belong to the login in progress, so it was ignored.".into(),
            Some(format!("If you started a login, finish it in the tab that aw-sync-samay opened, or run `{}` again.", login())),
        )
    }

    pub(crate) fn denied(error: &str, description: Option<&str>) -> Self {
        let message = if error == "access_denied" {
            "The sign-in was declined or cancelled, so aw-sync-samay is not signed in.".to_string()
        } else {
            format!("The identity provider refused the sign-in ({error}).")
        };
        let message = match description {
            Some(d) => format!("{message} It said: {d}"),
            None => message,
        };
        Page::new(
            StatusCode::OK,
            "Sign-in not completed",
            message,
            Some(format!(
                "Run `{}` again and approve the access to sign in.",
                login()
            )),
        )
        .last()
        .refusal()
    }

    pub(crate) fn missing_code() -> Self {
        Page::new(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The sign-in response had no authorization code.".into(),
            Some(format!("Run `{}` again. If it keeps happening, the identity provider's client may not allow the authorization-code flow.", login())),
        )
        .last()
    }

    pub(crate) fn gone() -> Self {
        Page::new(
            StatusCode::GONE,
            "Sign-in already finished",
            "This login is over; this response was not used.".into(),
            Some(format!("Run `{}` to sign in again.", login())),
        )
        .last()
    }

    pub(crate) fn busy() -> Self {
        Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many sign-in responses at once; this one was not looked at.".into(),
            None,
        )
    }

    pub(crate) fn not_found() -> Self {
        Page::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "aw-sync-samay only answers its sign-in callback here.".into(),
            None,
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        let mut page = Page::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "The sign-in callback only accepts GET.".into(),
            None,
        );
        page.allow_get_only = true;
        page
    }

    /// One line for the deep-link process and the paste prompt.
    pub(crate) fn plain(&self) -> String {
        let mut text = format!("{}: {}", self.title, self.message);
        if let Some(hint) = &self.hint {
            text.push(' ');
            text.push_str(hint);
        }
        text.replace(['\r', '\n'], " ")
    }

    pub(crate) fn html(&self) -> String {
        let (accent, mark) = if self.status.is_success() && self.title == "Signed in" {
            ("#2e7d32", "&#10003;")
        } else if self.status.is_success() {
            ("#455a64", "&#8505;")
        } else {
            ("#c62828", "!")
        };
        let hint = self
            .hint
            .as_deref()
            .map(|h| format!("<p class=\"hint\">{}</p>", escape(h)))
            .unwrap_or_default();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<title>{title} \u{2013} aw-sync-samay</title>\
<style>\
:root{{color-scheme:light dark}}\
body{{font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",sans-serif;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center;background:Canvas;color:CanvasText}}\
main{{max-width:34em;padding:2em;border-left:6px solid {accent}}}\
h1{{font-size:1.4em;margin:0 0 .5em}}\
.mark{{color:{accent};margin-right:.3em}}\
.hint{{opacity:.8}}\
</style></head><body><main><h1><span class=\"mark\">{mark}</span>{title}</h1>\
<p>{message}</p>{hint}<p class=\"hint\">aw-sync-samay</p></main></body></html>\n",
            title = escape(&self.title),
            message = escape(&self.message),
        )
    }

    pub(crate) fn into_response(self) -> Response<String> {
        let mut response = Response::new(self.html());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        for (name, value) in SECURITY_HEADERS {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        if self.allow_get_only {
            headers.insert(ALLOW, HeaderValue::from_static("GET"));
        }
        if self.last {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        // Belt and braces for old proxies that ignore `no-store`.
        headers.insert("pragma", HeaderValue::from_static("no-cache"));
        debug_assert!(headers.contains_key(CACHE_CONTROL));
        response
    }
}

/// HTML text and attribute escaping.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
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

    #[test]
    fn request_text_is_escaped() {
        let page = Page::denied("access_denied", Some("<script>alert('x')</script>&"));
        let html = page.html();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"));
    }

    #[test]
    fn pages_are_self_contained() {
        for page in [
            Page::signed_in("alice"),
            Page::foreign(),
            Page::denied("x", None),
            Page::not_found(),
            Page::received(),
        ] {
            let html = page.html();
            for needle in [
                "http:", "https:", "src=", "href=", "<script", "<link", "url(",
            ] {
                assert!(!html.contains(needle), "{needle} in {html}");
            }
        }
    }
}
