//! The demo chat page served at `GET /demo` when `demo = true`: the Gorilla
//! WebSocket chat example rebuilt on the Centrifugo client protocol
//! (`demo/index.html`, `demo/chat.js`), compiled into the binary so the
//! relay needs no files at run time.

const INDEX_HTML: &[u8] = include_bytes!("../../demo/index.html");
const CHAT_JS: &[u8] = include_bytes!("../../demo/chat.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The demo asset for a request path (without its query string): its
/// `Content-Type` and bytes, or `None` if `path` is not a demo asset.
/// `/demo` and `/demo/` are the page; it loads `/demo/chat.js` by that
/// absolute path, so both forms of the page URL work.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/demo" | "/demo/" | "/demo/index.html" => Some((HTML, INDEX_HTML)),
        "/demo/chat.js" => Some((JAVASCRIPT, CHAT_JS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::asset;

    #[test]
    fn page_and_script() {
        for path in ["/demo", "/demo/", "/demo/index.html"] {
            let (ctype, body) = asset(path).expect(path);
            assert_eq!(ctype, "text/html; charset=utf-8");
            let text = std::str::from_utf8(body).expect("page is UTF-8");
            assert!(text.starts_with("<!doctype html>"), "{path}");
            // The page must reference the script by the path we serve it at.
            assert!(text.contains(r#"<script src="/demo/chat.js"></script>"#));
        }
        let (ctype, body) = asset("/demo/chat.js").expect("chat.js");
        assert_eq!(ctype, "text/javascript; charset=utf-8");
        let text = std::str::from_utf8(body).expect("script is UTF-8");
        assert!(text.contains("/connection/websocket"));
        assert!(text.contains("/demo/token?user="));
    }

    #[test]
    fn nothing_else() {
        for path in [
            "",
            "/",
            "/demo/token",
            "/demo/../Cargo.toml",
            "/demo/chat.js/",
            "/demo//chat.js",
            "/demo/CHAT.JS",
            "/demox",
            "/demo?x=1",
            "/connection/websocket",
        ] {
            assert!(asset(path).is_none(), "{path:?}");
        }
    }
}
