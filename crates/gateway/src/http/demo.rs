//! The development demo page: with `demo_dir` configured (only
//! `config/dev.toml` does), `GET /demo/` serves the SDK's demo chat from
//! `<demo_dir>/demo/` and the SDK itself as `/demo/switchboard.js` (with
//! the MessagePack codec it imports, `/demo/vendor/msgpack.js`), so
//! `make run` shows the gateway working in a browser. Without it every
//! `/demo` path is the ordinary 404.
//!
//! Written by hand rather than with a static-file crate: it serves a fixed
//! shape of names (one path segment, a known extension) from one folder,
//! which rules out traversal by construction, and nothing else is needed.

use std::path::PathBuf;

use http::{header, HeaderValue, Response, StatusCode};

use crate::http::response::{self, Body};
use crate::node::Node;

/// The content type of a file the demo may serve, by extension.
fn content_type(name: &str) -> Option<&'static str> {
    let (stem, extension) = name.rsplit_once('.')?;
    let plain = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !plain {
        return None;
    }
    match extension {
        "html" => Some("text/html; charset=utf-8"),
        "js" => Some("text/javascript; charset=utf-8"),
        "css" => Some("text/css; charset=utf-8"),
        "png" => Some("image/png"),
        _ => None,
    }
}

/// The vendored module the SDK imports as `./vendor/msgpack.js`: the one
/// path of two segments served, named in full.
const SDK_MSGPACK: &str = "vendor/msgpack.js";

/// The file behind a `/demo...` path, if the path names one.
fn file_for(dir: &std::path::Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let name = match path.strip_prefix("/demo/")? {
        "" => "index.html",
        name => name,
    };
    if name == SDK_MSGPACK {
        return Some((
            dir.join("src").join(SDK_MSGPACK),
            "text/javascript; charset=utf-8",
        ));
    }
    let kind = content_type(name)?;
    let file = if name == "switchboard.js" {
        dir.join("src/switchboard.js")
    } else {
        dir.join("demo").join(name)
    };
    Some((file, kind))
}

fn not_found() -> Response<Body> {
    response::error(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

/// Serves `GET /demo` and `GET /demo/...`.
pub async fn serve(node: &Node, path: &str) -> Response<Body> {
    let Some(dir) = &node.config.demo_dir else {
        return not_found();
    };
    if path == "/demo" {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/demo/"));
        return response;
    }
    let Some((file, kind)) = file_for(dir, path) else {
        return not_found();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mut response = Response::new(Body::new(bytes.into()));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
        Err(error) => {
            tracing::debug!(message = "demo file not served", file = %file.display(), %error);
            not_found()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_plain_names_in_the_demo_folder() {
        let dir = Path::new("/sdk");
        assert_eq!(
            file_for(dir, "/demo/"),
            Some((
                PathBuf::from("/sdk/demo/index.html"),
                "text/html; charset=utf-8"
            ))
        );
        assert_eq!(
            file_for(dir, "/demo/app.js").map(|(f, _)| f),
            Some(PathBuf::from("/sdk/demo/app.js"))
        );
        assert_eq!(
            file_for(dir, "/demo/switchboard.js").map(|(f, _)| f),
            Some(PathBuf::from("/sdk/src/switchboard.js"))
        );
        assert_eq!(
            file_for(dir, "/demo/vendor/msgpack.js"),
            Some((
                PathBuf::from("/sdk/src/vendor/msgpack.js"),
                "text/javascript; charset=utf-8"
            ))
        );
        for refused in [
            "/demo/../Cargo.toml",
            "/demo/..%2fsecret.js",
            "/demo/a/b.js",
            "/demo/vendor/other.js",
            "/demo/vendor/../switchboard.js",
            "/demo/msgpack.js.map",
            "/demo/.js",
            "/demo/x.rs",
            "/demo/x.js.map",
            "/demox.js",
            "/other/x.js",
        ] {
            assert_eq!(file_for(dir, refused), None, "{refused}");
        }
    }
}
