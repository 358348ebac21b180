//! The hosted pages' HTML: small, plain, self-contained (no script, no external resources),
//! every dynamic text escaped. They never show a token or a secret: a page names the
//! outcome and, for an error, its documented code.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ErrorCode};

/// The headers every hosted response carries: never framed, never cached, no referrer sent
/// on (a URL of ours may hold a state), nothing loaded but the page itself.
pub(super) const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'",
    ),
    ("cache-control", "no-store"),
    ("pragma", "no-cache"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
];

/// A page with `title` and paragraphs `body` (already escaped).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,-apple-system,\"Segoe UI\",sans-serif;background:#f6f7f9;\
         color:#1d2330;margin:0;display:flex;min-height:100vh;align-items:center;\
         justify-content:center}}\
         main{{background:#fff;border:1px solid #dde1e8;border-radius:12px;padding:2rem 2.5rem;margin:1rem;\
         max-width:28rem;box-shadow:0 1px 3px rgba(0,0,0,.06)}}\
         h1{{font-size:1.35rem;margin:0 0 .75rem}}p{{line-height:1.5;margin:.5rem 0}}\
         code{{background:#eef0f4;border-radius:4px;padding:.1rem .35rem}}\
         button{{font:inherit;background:#1d4ed8;color:#fff;border:0;border-radius:8px;\
         padding:.6rem 1.1rem;margin-top:.75rem;cursor:pointer}}\
         .muted{{color:#5b6475;font-size:.9rem}}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n"
    );
    let mut response = (status, html).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The start page: where the user is going, a warning, and "Continue" (a form posted to
/// the page itself, which opens the login). Its CSP lets the form lead on to the provider.
pub(super) fn start(provider: &str, provider_origin: &str) -> Response {
    let provider = escape(provider);
    let mut response = page(
        StatusCode::OK,
        "Sign in",
        &format!(
            "<p>An app asked to sign you in with <strong>{provider}</strong>.</p>\
             <p class=\"muted\">Continue only if you started this sign-in yourself, just now, \
             in an app you trust. If someone sent you this link, close this window.</p>\
             <form method=\"post\"><button type=\"submit\">Continue to {provider}</button></form>"
        ),
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
         form-action 'self' {provider_origin}"
    );
    if let Ok(csp) = HeaderValue::try_from(csp) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("content-security-policy"), csp);
    }
    response
}

/// After a login that finished: the user goes back to the app.
pub(super) fn signed_in() -> Response {
    page(
        StatusCode::OK,
        "You are signed in",
        "<p>You can close this window and return to the app.</p>",
    )
}

/// A login that could not finish: what happened in words, and its code.
pub(super) fn failed(error: &Error) -> Response {
    let (title, advice) = match error.code {
        ErrorCode::AccessDenied => (
            "Sign-in cancelled",
            "The sign-in was refused at the provider. Return to the app to try again.",
        ),
        ErrorCode::InvalidState => (
            "This sign-in link cannot be used",
            "It was already used, or it was opened in another browser than the one that \
             started the sign-in. Return to the app and start again.",
        ),
        ErrorCode::LoginExpired => (
            "This sign-in has expired",
            "Return to the app and start again.",
        ),
        ErrorCode::NotFound => (
            "Unknown sign-in",
            "This sign-in link is not known here. Return to the app and start again.",
        ),
        ErrorCode::Forbidden => (
            "Continue from the sign-in page",
            "This sign-in can only be continued with the button on its own page. Return to \
             the app and start again.",
        ),
        ErrorCode::RateLimited => ("Too many requests", "Wait a moment, then reload this page."),
        _ => (
            "Sign-in failed",
            "Return to the app and try again. If it keeps failing, tell whoever runs it the \
             code below.",
        ),
    };
    let status = StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    page(
        status,
        title,
        &format!(
            "<p>{advice}</p><p class=\"muted\">Error code: <code>{}</code></p>",
            escape(error.code.as_str())
        ),
    )
}

/// Text for HTML.
pub(super) fn escape(text: &str) -> String {
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
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
