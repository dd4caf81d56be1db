//! The Blockpost web explorer: a read-only website over one node (and, optionally, one
//! auditor) that shows blocks, transactions, participants, the directory log, alerts and
//! search results. It is an outsider: it reads through the verifying client library
//! ([`blockpost_client`]) and shows only what verified against the keys it pinned on first
//! contact, saying on each page what was checked against which key. A check that fails is
//! shown as the page, instead of the data.
//!
//! Every page is server-rendered HTML that works without JavaScript and loads nothing from
//! elsewhere, and has a JSON twin (`?format=json` or `Accept: application/json`) built from
//! the same view. Bad input gets a 400 page, an unknown object a 404 page; while the node or
//! the auditor is away, pages seen before are served as last verified, under a banner, and
//! others get a 503 page.
//!
//! # Layout
//! - `config`: what it reads from, checked before anything is served.
//! - `fail`: why a page cannot be shown, and the status each reason gets.
//! - `source`: the connections to the node (lazy, reconnecting, every call with a deadline)
//!   and the auditor; what is away since when.
//! - `pages`: one function per page: fetch through the client, build the view.
//! - `views`: the views, one plain struct per page: serialized, they are the JSON twins.
//! - `html`: the layout, the stylesheet and every page's HTML.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

mod config;
mod fail;
mod html;
mod pages;
mod source;
mod views;

pub use config::{Config, Error};
pub use fail::Away;

/// The explorer's router (for a caller that serves it itself).
pub fn router(config: Config) -> Result<Router, Error> {
    config.check()?;
    let app = Arc::new(pages::App::new(config)?);
    Ok(Router::new()
        .route("/", get(home))
        .route("/block/{height}", get(block))
        .route("/message/{id}", get(message))
        .route("/tx/{id}", get(transaction))
        .route("/tx/{id}/evidence.bpe", get(evidence))
        .route("/participant/{address}", get(participant))
        .route(
            "/participant/{address}/{index}/certificate.pem",
            get(certificate),
        )
        .route("/directory", get(directory))
        .route("/alerts", get(alerts))
        .route("/search", get(search))
        .route("/static/style.css", get(style))
        .fallback(not_found)
        .with_state(app))
}

/// Serves the explorer on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let router = router(config)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

type AppState = State<Arc<pages::App>>;

macro_rules! page {
    ($name:ident, |$app:ident, $r:ident $(, $arg:ident)?| $body:expr) => {
        async fn $name(
            State($app): AppState,
            $(Path($arg): Path<String>,)?
            uri: Uri,
            headers: HeaderMap,
        ) -> Response {
            match pages::req(&uri, &headers) {
                Ok($r) => {
                    let built = $body.await;
                    $app.respond(&$r, built)
                }
                Err(f) => $app.respond_fail(headers_json(&headers), f),
            }
        }
    };
}

fn headers_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

page!(home, |app, r| app.home(&r));
page!(block, |app, r, height| app.block(&r, &height));
page!(message, |app, r, id| app.message(&r, &id));
page!(transaction, |app, r, id| app.transaction(&r, &id));
page!(participant, |app, r, address| app.participant(&r, &address));
page!(directory, |app, r| app.directory(&r));
page!(alerts, |app, r| app.alerts(&r));

async fn search(State(app): AppState, uri: Uri, headers: HeaderMap) -> Response {
    match pages::req(&uri, &headers) {
        Ok(r) => {
            if let Some(to) = r.params.q.as_deref().and_then(pages::App::shortcut) {
                return axum::response::Redirect::to(&to).into_response();
            }
            let built = app.search(&r).await;
            app.respond(&r, built)
        }
        Err(f) => app.respond_fail(headers_json(&headers), f),
    }
}

async fn evidence(State(app): AppState, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match app.evidence(&id).await {
        Ok(zip) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/zip"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_str(&format!(
                        "attachment; filename=\"{}.bpe\"",
                        pages::file_name(&id)
                    ))
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
                ),
            ],
            zip,
        )
            .into_response(),
        Err(f) => app.respond_fail(headers_json(&headers), f),
    }
}

async fn certificate(
    State(app): AppState,
    Path((address, index)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match app.certificate(&address, &index).await {
        Ok(pem) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-pem-file"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_str(&format!(
                        "attachment; filename=\"{}-{}.pem\"",
                        pages::file_name(&address),
                        pages::file_name(&index)
                    ))
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
                ),
            ],
            pem,
        )
            .into_response(),
        Err(f) => app.respond_fail(headers_json(&headers), f),
    }
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        html::STYLE,
    )
        .into_response()
}

async fn not_found(State(app): AppState, uri: Uri, headers: HeaderMap) -> Response {
    app.respond_fail(
        headers_json(&headers),
        fail::Fail::NotFound(format!("there is no page at {}", uri.path())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_before_serving() {
        let dir = std::env::temp_dir();
        assert!(
            Config::new("http://127.0.0.1:7700", None, dir.clone())
                .check()
                .is_ok()
        );
        assert!(
            Config::new(
                "https://node.example:7700",
                Some("http://a:7800"),
                dir.clone()
            )
            .check()
            .is_ok()
        );
        for (node, auditor) in [
            ("notaurl", None),
            ("127.0.0.1:7700", None),
            ("ftp://x", None),
            ("http://127.0.0.1:7700", Some("not a url")),
        ] {
            let e = Config::new(node, auditor, dir.clone()).check().unwrap_err();
            assert!(e.to_string().starts_with("bad "), "{e}");
        }
    }
}
