//! Headless Chromium driven over WebDriver, for the console's browser test
//! and `cargo xtask bench serve --mode console`. Its own crate so the
//! benchmark binary does not link the test kit (S3 stand-in and all).

use std::path::Path;

/// Kills (and reaps) the driver when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Headless Chromium driven over WebDriver (`chromedriver` from Debian's
/// `chromium-driver`, installed by `scripts/setup.sh`), with a fresh profile:
/// a cold browser cache, no network but loopback.
pub struct Browser {
    /// The WebDriver session.
    pub client: fantoccini::Client,
    _driver: Kill,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session with a window
    /// of `width` x `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Result<Self, String> {
        let driver_bin = [
            "chromedriver",
            "/usr/bin/chromedriver",
            "/usr/lib/chromium/chromedriver",
        ]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or(
            "chromedriver not found: install chromium and chromium-driver (scripts/setup.sh does)",
        )?;
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let driver = std::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {driver_bin}: {e}"))?;
        let driver = Kill(driver);
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-extensions",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = match caps {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let client = loop {
            match fantoccini::ClientBuilder::rustls()
                .map_err(|e| e.to_string())?
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(format!("connecting to chromedriver: {e}"));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        Ok(Self {
            client,
            _driver: driver,
            _profile: profile,
        })
    }

    /// Waits for a CSS selector to match (up to `secs`).
    pub async fn wait_for(
        &self,
        css: &str,
        secs: u64,
    ) -> Result<fantoccini::elements::Element, String> {
        self.client
            .wait()
            .at_most(std::time::Duration::from_secs(secs))
            .for_element(fantoccini::Locator::Css(css))
            .await
            .map_err(|e| format!("waiting for `{css}`: {e}"))
    }

    /// Saves a PNG screenshot of the window.
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Ends the session (the driver and profile go when dropped).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
