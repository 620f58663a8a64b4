//! The console's pages, rendered on the server with `maud` (every value is escaped as it is
//! written into the HTML). One file per page; the layout and small formatting helpers here.

pub mod activity;
pub mod agents;
pub mod entries;
pub mod overview;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::assets::{CSS_PATH, ICON_PATH, JS_PATH};
use crate::datastore::DatastoreError;

/// The pages in the navigation bar: path and title.
const NAV: [(&str, &str); 4] = [
    ("/", "Overview"),
    ("/entries", "Entries"),
    ("/agents", "Agents"),
    ("/activity", "Activity"),
];

/// A whole page: `live` names the script's live part (`data-live` on `<body>`), if any.
fn layout(current: &str, title: &str, live: Option<&str>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Sigil console" }
                    link rel="stylesheet" href=(CSS_PATH);
                    link rel="icon" href=(ICON_PATH) type="image/svg+xml";
                    script src=(JS_PATH) defer {}
                }
                body data-live=[live] {
                    header {
                        span.brand { "Sigil" }
                        nav {
                            @for (path, name) in NAV {
                                a href=(path) aria-current=[(path == current).then_some("page")] { (name) }
                            }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// Unix seconds as RFC 3339 (UTC), or "—" for 0 / out of range.
fn when(unix: i64) -> String {
    if unix <= 0 {
        return "—".to_owned();
    }
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "—".to_owned())
}

/// An optional value, or "—" when unknown.
fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

/// Percent-encodes `s` for a query string (RFC 3986 unreserved characters kept).
pub(super) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A datastore failure: the page says so without details (they go to the log).
struct PageError(DatastoreError);

impl From<DatastoreError> for PageError {
    fn from(e: DatastoreError) -> Self {
        Self(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            DatastoreError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(error = %self.0, "console page failed");
        let message = match &self.0 {
            DatastoreError::InvalidArgument(m) => m.clone(),
            _ => "the datastore failed; see the server's log".to_owned(),
        };
        (
            status,
            layout("", "Error", None, html! { p.error { (message) } }),
        )
            .into_response()
    }
}
