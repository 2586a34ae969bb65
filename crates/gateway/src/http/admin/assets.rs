//! The admin UI's files, compiled into the binary: `admin/dist/` at the
//! repository root (`index.html`, `app.js`, `app.css`, built and committed
//! by the UI's package). Embedded rather than read from disk so a node
//! serves exactly the UI it was built with, needs no files beside it, and
//! fetches nothing from anywhere at run time.

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use crate::http::response::Body;

const INDEX_HTML: &[u8] = include_bytes!("../../../../../admin/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../../../../admin/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../../../../../admin/dist/app.css");

/// The file behind a path under `/admin/` (`""` is the page), with its
/// content type.
pub fn file(name: &str) -> Option<(&'static [u8], &'static str)> {
    match name {
        "" | "index.html" => Some((INDEX_HTML, "text/html; charset=utf-8")),
        "app.js" => Some((APP_JS, "text/javascript; charset=utf-8")),
        "app.css" => Some((APP_CSS, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The file as a `200`, revalidated on every load (a new build replaces
/// it under the same name).
pub fn serve(bytes: &'static [u8], content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(bytes)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_files_and_nothing_else() {
        assert_eq!(
            file("").map(|(_, kind)| kind),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            file("app.js").map(|(_, kind)| kind),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            file("app.css").map(|(_, kind)| kind),
            Some("text/css; charset=utf-8")
        );
        for other in ["app.ts", "../Cargo.toml", "dist/app.js", "index.htm"] {
            assert!(file(other).is_none(), "{other}");
        }
        assert!(!INDEX_HTML.is_empty() && !APP_JS.is_empty() && !APP_CSS.is_empty());
    }
}
