//! Headless Chromium over WebDriver (Debian: chromium, chromium-driver;
//! `.ci/run` installs them), for the pages the processes serve.

use crate::*;
use anyhow::{Context, Result};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver on a free port; killed when dropped.
pub struct Driver(Child, u16);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn driver() -> Result<Driver> {
    let port = free_port();
    let bin = std::env::var("TURNOUT_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin} (apt-get install chromium chromium-driver)"))?;
    let d = Driver(child, port);
    wait_for("chromedriver", DEADLINE, || async move {
        http("GET", &format!("http://127.0.0.1:{port}/status"), None, &[])
            .await
            .ok()
            .map(|_| ())
    })
    .await?;
    Ok(d)
}

pub async fn browser(d: &Driver) -> Result<Browser> {
    let profile = std::env::temp_dir().join(format!(
        "turnout-chromium-{}-{}",
        std::process::id(),
        free_port()
    ));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("TURNOUT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1100,800", format!("--user-data-dir={}", profile.display())]
        }),
    );
    Ok(ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.1))
        .await?)
}

pub async fn text_of(b: &Browser, css: &str) -> String {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element's text contains `needle`; returns the text.
pub async fn wait_text(b: &Browser, css: &str, needle: &str) -> Result<String> {
    wait_for(
        &format!("{css} to show {needle:?}"),
        Duration::from_secs(15),
        || async {
            let t = text_of(b, css).await;
            t.contains(needle).then_some(t)
        },
    )
    .await
}
