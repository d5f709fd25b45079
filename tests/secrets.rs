//! No secret in any output: an S3-probed volume with credentials, an admin token and an event
//! hook, through `check`, a real mount logging at debug level, an S3 outage, a bucket deletion
//! and the switch it causes. Every output is searched for the configured secret strings.
mod common;

use std::fs;
use std::time::Duration;

use common::s3_server::{ACCESS_KEY, S3Server, SECRET_KEY};
use common::*;
use failoverfs::admin;
use failoverfs::config::AdminAddress;

const TOKEN: &str = "admin-token-Zq8rT2";

#[test]
fn no_output_ever_shows_a_credential_or_the_admin_token() {
    // The TLS provider the test's own HTTP clients need (the daemon installs its own).
    failoverfs::probe::http_client().unwrap();
    let mut server = S3Server::start();
    assert_eq!(server.create_bucket("vol0"), 200);
    let probe_dir = tempfile::tempdir().unwrap();
    let creds = probe_dir.path().join("creds.toml");
    fs::write(
        &creds,
        format!("access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    let token_file = probe_dir.path().join("token");
    fs::write(&token_file, TOKEN).unwrap();
    let socket = probe_dir.path().join("admin.sock");
    let events = probe_dir.path().join("events.jsonl");
    let endpoint = server.endpoint.clone();
    let layout = Layout::with_volumes(
        2,
        "",
        &format!(
            "{FAST_HEALTH}weak_confirmations = 3\nweak_confirm_window = \"1s\"\n\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"{}\"\n\n\
             [events]\nexec = [\"sh\", \"-c\", \"cat >> {}\"]\n",
            socket.display(),
            token_file.display(),
            events.display()
        ),
        |i| {
            if i == 0 {
                format!(
                    "probe = {{ kind = \"s3\", endpoint = \"{endpoint}\", bucket = \"vol0\", credentials_file = \"{}\", timeout = \"500ms\" }}",
                    creds.display()
                )
            } else {
                String::new()
            }
        },
    );
    let config = layout.config.clone();
    let check = bin()
        .args(["check", "--log-level", "debug", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let mut outputs = vec![
        (
            "check stdout",
            String::from_utf8_lossy(&check.stdout).into_owned(),
        ),
        (
            "check stderr",
            String::from_utf8_lossy(&check.stderr).into_owned(),
        ),
    ];
    assert!(check.status.success(), "{outputs:?}");

    let mut m = BinMount::start(layout, &["--log-level", "debug"]);
    let address = AdminAddress::Unix(socket);
    let status = |a: &AdminAddress| -> serde_json::Value {
        let (code, body) = runtime()
            .block_on(admin::request(a, "GET", "/status", Some(TOKEN)))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    wait_until(Duration::from_secs(20), "v0 healthy", || {
        status(&address)["volumes"][0]["state"] == "healthy"
    });
    // An outage (transport errors, logged at debug), then back. The directory itself still
    // answers, so the volume stays usable meanwhile.
    server.stop();
    let rounds = status(&address)["volumes"][0]["rounds"].as_u64().unwrap();
    wait_until(
        Duration::from_secs(20),
        "probe rounds during the outage",
        || status(&address)["volumes"][0]["rounds"].as_u64().unwrap() >= rounds + 5,
    );
    server.resume();
    wait_until(Duration::from_secs(20), "v0 healthy again", || {
        status(&address)["volumes"][0]["state"] == "healthy"
    });
    // The bucket deleted: a switch.
    assert!(matches!(server.delete_bucket("vol0"), 200 | 204));
    wait_until(Duration::from_secs(30), "the switch", || {
        status(&address)["active"] == "v1"
    });
    for path in ["/status", "/metrics", "/readyz", "/healthz"] {
        let (_, body) = runtime()
            .block_on(admin::request(&address, "GET", path, Some(TOKEN)))
            .unwrap();
        outputs.push((path, body));
    }
    let (_, refused) = runtime()
        .block_on(admin::request(&address, "GET", "/status", Some("wrong")))
        .unwrap();
    outputs.push(("401 answer", refused));
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.wait(Duration::from_secs(20)), Some(0));
    outputs.push(("mount stderr", m.stderr()));
    outputs.push(("events", fs::read_to_string(&events).unwrap_or_default()));
    assert!(
        outputs[outputs.len() - 1].1.contains("failover_completed"),
        "{outputs:?}"
    );
    assert!(
        outputs.iter().any(|(_, o)| o.contains("vol0")),
        "the outputs were captured"
    );
    for (what, out) in &outputs {
        for secret in [ACCESS_KEY, SECRET_KEY, TOKEN, "X-Amz-", "x-amz-"] {
            assert!(
                !out.contains(secret),
                "{what} shows a secret ({secret}):\n{out}"
            );
        }
    }
}
