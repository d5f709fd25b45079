//! Event hooks through a real failover: the exec hook receives every event as JSON, and a dead
//! webhook never delays a switch.
mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

fn mount_with_events(events: &str) -> Fixture {
    let layout = Layout::new(
        2,
        "fleet_name = \"data\"\n",
        &format!("{FAST_HEALTH}\n[events]\n{events}\n"),
    );
    for (i, v) in layout.vols.iter().enumerate() {
        fs::write(v.join("f"), format!("v{i}")).unwrap();
    }
    Fixture::mount(layout)
}

fn events_in(file: &std::path::Path) -> Vec<serde_json::Value> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn the_exec_hook_hears_every_event_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let fx = mount_with_events(&format!(
        "exec = [\"sh\", \"-c\", \"cat >> {}\"]",
        log.display()
    ));
    fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.gone")).unwrap();
    wait_until(Duration::from_secs(30), "failover_completed", || {
        events_in(&log)
            .iter()
            .any(|e| e["event"] == "failover_completed")
    });
    drop(fx);
    let events = events_in(&log);
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} in {events:#?}"))
            .clone()
    };
    let started = find("failover_started");
    assert_eq!(started["from"], "v0");
    assert_eq!(started["fleet"], "data");
    assert!(started["reason"].as_str().unwrap().contains("deletion"));
    let done = find("failover_completed");
    assert_eq!(
        (done["from"].as_str(), done["to"].as_str()),
        (Some("v0"), Some("v1"))
    );
    assert_eq!(done["outcome"], "swapped");
    assert_eq!(done["generation"], 2);
    assert!(events.iter().any(|e| e["event"] == "volume_state_changed"
        && e["volume"] == "v0"
        && e["to"] == "deleted"));
    // In order, and the way out last.
    let order: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let pos = |n: &str| order.iter().position(|e| *e == n).unwrap();
    assert!(
        pos("failover_started") < pos("failover_completed"),
        "{order:?}"
    );
    let exiting = events.last().unwrap();
    assert_eq!(exiting["event"], "exiting", "{order:?}");
    assert_eq!(exiting["code"], 0);
}

#[test]
fn a_dead_webhook_never_delays_a_switch() {
    // Nothing listens there; each event is tried with backoff for up to 4 s.
    let fx = mount_with_events("webhook = \"http://127.0.0.1:9/events\"\ntimeout = \"1s\"");
    let t0 = Instant::now();
    fs::rename(&fx.layout.vols[0], fx.layout.dir.path().join("v0.gone")).unwrap();
    wait_until(Duration::from_secs(30), "the switch", || {
        !fx.app().audit().is_empty()
    });
    let a = &fx.app().audit()[0];
    eprintln!(
        "deletion to switch complete: {:?}; gate to publish {:?}",
        t0.elapsed(),
        a.swap
    );
    assert!(matches!(
        a.outcome,
        failoverfs::failover::Outcome::Swapped { .. }
    ));
    // The switch itself never waited for a hook (each try is bounded by 1 s).
    assert!(a.swap < Duration::from_millis(500), "{a:?}");
    assert_eq!(fs::read(fx.path("f")).unwrap(), b"v1");
}
