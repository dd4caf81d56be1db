//! A real browser for end-to-end tests: Debian's headless Chromium driven through
//! `chromedriver` with the W3C WebDriver protocol (HTTP/1.1 and JSON, a handful of
//! endpoints). `scripts/setup-browser` installs both; a test that needs them fails with that
//! hint when they are missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The W3C id of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver`, killed on drop.
pub struct Browser {
    child: std::process::Child,
    port: u16,
    profile: tempfile::TempDir,
}

/// One browser window.
pub struct Session {
    port: u16,
    id: String,
}

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// One HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`): the status and body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(payload.as_bytes()).await?;
    // Read the head, then exactly the body it announces (servers may keep the
    // connection open whatever the request said).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("the answer to {method} {path} broke off in its head");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in the answer to {method} {path}"))?;
    let length: Option<usize> = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = headers.contains("transfer-encoding: chunked");
    let mut body = raw[split + 4..].to_vec();
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if let Some(n) = length {
        body.truncate(n);
    } else if chunked {
        body = unchunk(&body)?;
    }
    Ok((status, body))
}

/// `GET url` (`http://127.0.0.1:PORT/path`): the status and body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .ok_or_else(|| anyhow!("{url} is not http://127.0.0.1:PORT/..."))?;
    let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    tokio::time::timeout(
        Duration::from_secs(60),
        http(port.parse()?, "GET", path, None),
    )
    .await
    .map_err(|_| anyhow!("GET {url}: no answer within 60 s"))?
}

/// A WebDriver call; returns the `value` of its JSON answer.
async fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let (_, body) = tokio::time::timeout(Duration::from_secs(60), http(port, method, path, body))
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer from chromedriver within 60 s"))??;
    let v: Value = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{method} {path}: not JSON: {}",
            String::from_utf8_lossy(&body)
        )
    })?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if let Some(err) = value.get("error").and_then(Value::as_str) {
        bail!(
            "{method} {path}: {err}: {}",
            value.get("message").and_then(Value::as_str).unwrap_or("")
        );
    }
    Ok(value)
}

fn unchunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let start = end + 2;
        out.extend_from_slice(
            b.get(start..start + size)
                .ok_or_else(|| anyhow!("short chunk"))?,
        );
        b = b.get(start + size + 2..).unwrap_or_default();
    }
}

impl Browser {
    /// Starts `chromedriver` on a free port and waits until it is ready.
    pub async fn start() -> anyhow::Result<Self> {
        let driver = find_binary("CHROMEDRIVER", &["chromedriver"]).ok_or_else(|| {
            anyhow!("chromedriver is missing: run scripts/setup-browser (Debian: chromium chromium-driver)")
        })?;
        let port = blockpost_node::free_port()?;
        let child = std::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        let b = Self {
            child,
            port,
            profile: tempfile::tempdir()?,
        };
        crate::wait_for(Duration::from_secs(30), "chromedriver", || async {
            call(port, "GET", "/status", None)
                .await
                .ok()
                .filter(|v| v["ready"].as_bool() == Some(true))
        })
        .await?;
        Ok(b)
    }

    /// A new headless window of `width`×`height`, with JavaScript off unless
    /// `javascript`.
    pub async fn session(
        &self,
        javascript: bool,
        width: u32,
        height: u32,
    ) -> anyhow::Result<Session> {
        let chromium = find_binary(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )
        .ok_or_else(|| anyhow!("chromium is missing: run scripts/setup-browser"))?;
        let mut options = json!({
            "binary": chromium.display().to_string(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                format!("--user-data-dir={}", self.profile.path().join(format!("p{}", rand_suffix())).display()),
                format!("--window-size={width},{height}"),
            ],
        });
        if !javascript {
            options["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let v = call(
            self.port,
            "POST",
            "/session",
            Some(&json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options,
            } } })),
        )
        .await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?
            .to_owned();
        Ok(Session {
            port: self.port,
            id,
        })
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An element on the page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Session {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        call(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body.as_ref(),
        )
        .await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    /// The current URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// The document's title.
    pub async fn title(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/title", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/source", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Every element matching the CSS selector.
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element matching the CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        self.find_all(css)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no element matches {css:?}"))
    }

    /// The visible text of an element.
    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        Ok(self
            .call("GET", &format!("/element/{}/text", e.0), None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// The visible text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> anyhow::Result<String> {
        let e = self.find(css).await?;
        self.text(&e).await
    }

    /// An attribute of an element.
    pub async fn attribute(&self, e: &Element, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .call("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .await?
            .as_str()
            .map(str::to_owned))
    }

    /// Clicks an element (a link: the browser follows it).
    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.call("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await?;
        Ok(())
    }

    /// Types `text` into an input.
    pub async fn type_into(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    /// Writes a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let b64 = self.call("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .context("the screenshot is not base64")?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Closes the window.
    pub async fn close(self) -> anyhow::Result<()> {
        call(self.port, "DELETE", &format!("/session/{}", self.id), None).await?;
        Ok(())
    }
}
