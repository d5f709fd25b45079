//! A real S3 server on loopback for tests: `s3s-fs` (crates.io), installed by
//! `.ci/install-test-tools`. Buckets are directories under its root; SigV4 is enforced.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "AKIAFOFSTESTKEY00001";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "fofsSecretKeyForTests+0001";

/// A running server; killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub endpoint: String,
    port: u16,
}

impl S3Server {
    /// Start a server on a free loopback port and wait until it answers.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut s = S3Server {
            child: None,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(super::tool("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server (connections are refused until [`S3Server::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and root.
    pub fn resume(&mut self) {
        self.spawn();
    }

    fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(
            url::Url::parse(&self.endpoint).expect("url"),
            UrlStyle::Path,
            name.to_string(),
            "us-east-1",
        )
        .expect("bucket")
    }

    fn send(&self, method: &str, url: url::Url) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            reqwest::Client::new()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    url.as_str(),
                )
                .header("content-length", "0")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    }

    /// Create a bucket through the S3 API; returns the HTTP status.
    pub fn create_bucket(&self, name: &str) -> u16 {
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let b = self.bucket(name);
        let url = b.create_bucket(&creds).sign(Duration::from_secs(60));
        self.send("PUT", url)
    }

    /// Delete a bucket through the S3 API; returns the HTTP status.
    pub fn delete_bucket(&self, name: &str) -> u16 {
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let b = self.bucket(name);
        let url = b.delete_bucket(&creds).sign(Duration::from_secs(60));
        self.send("DELETE", url)
    }

    /// The directory holding a bucket's objects.
    pub fn bucket_dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
