//! The `cubefs` probe: `GET /admin/getVol?name=<vol>` on the CubeFS masters.
//!
//! Only an HTTP 200 JSON envelope `{"code":…,"msg":…,"data":…}` is authoritative, and only two
//! codes are acted on (the others were renumbered between CubeFS versions):
//! - code 0 with `Status 0`: healthy (`Forbidden true` only means read-only);
//! - code 0 with `Status 1`: deleted, unless `Forbidden` is set and `DeleteExecTime` is still in
//!   the future (delayed deletion, which can be undone): pending;
//! - code 7 (`vol not exists`): deleted.
//!
//! Everything else (refused, timeout, 400 `no leader`, 404, 405, 429, 502, malformed or truncated
//! JSON, code 0 without a valid `Status`, any other code) is transient, and the next master is
//! asked. Masters are tried last-good first, then in configured order, each with its own
//! timeout. With `cluster` set, a deletion answer counts only from a master whose `/admin/getIp`
//! names that cluster.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde_json::Value;

use super::{Authority, BoxFuture, Evidence, Probe, Strength, TransientKind, Verdict};
use crate::config::CubefsProbeSettings;

/// Bodies larger than this are not a `getVol` answer (a healthy one is about 2 KB).
const BODY_LIMIT: usize = 1 << 20;
const NONE: usize = usize::MAX;

/// See the module docs.
pub struct CubefsProbe {
    masters: Vec<String>,
    volume: String,
    timeout: Duration,
    cluster: Option<String>,
    skew: Duration,
    client: reqwest::Client,
    last_good: AtomicUsize,
    verified: Mutex<HashSet<usize>>,
}

/// What one master's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether it settles the question (an authoritative code 0 or 7); otherwise ask the next
    /// master.
    pub decisive: bool,
}

impl CubefsProbe {
    /// A probe of CubeFS volume `settings.volume` (or `name`), tolerating `skew` between our clock
    /// and the masters' when reading deletion times.
    pub fn new(
        settings: &CubefsProbeSettings,
        name: &str,
        skew: Duration,
        client: reqwest::Client,
    ) -> CubefsProbe {
        CubefsProbe {
            masters: settings.masters.clone(),
            volume: settings.volume.clone().unwrap_or_else(|| name.to_string()),
            timeout: settings.timeout,
            cluster: settings.cluster.clone(),
            skew,
            client,
            last_good: AtomicUsize::new(NONE),
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// The order in which masters are asked: the last one that answered, then the configured
    /// order.
    pub fn order(&self) -> Vec<usize> {
        let last = self.last_good.load(Ordering::Relaxed);
        let mut order = Vec::with_capacity(self.masters.len());
        if last < self.masters.len() {
            order.push(last);
        }
        order.extend((0..self.masters.len()).filter(|&i| i != last));
        order
    }

    async fn ask(&self, master: &str) -> Answer {
        // Volume names are validated against CubeFS's own pattern: nothing to escape.
        let url = format!("http://{master}/admin/getVol?name={}", self.volume);
        let resp = match self.client.get(&url).timeout(self.timeout).send().await {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    verdict: super::transport_failure(e),
                    decisive: false,
                };
            }
        };
        let status = resp.status().as_u16();
        let body = match super::read_body(resp, BODY_LIMIT).await {
            Ok(b) => b,
            Err(verdict) => {
                return Answer {
                    verdict,
                    decisive: false,
                };
            }
        };
        let source = format!("cubefs master {master}");
        classify(status, &body, SystemTime::now(), self.skew, &source)
    }

    /// Whether `master` belongs to the expected cluster (always, when none is configured).
    async fn same_cluster(&self, index: usize) -> Result<(), Verdict> {
        let Some(expected) = &self.cluster else {
            return Ok(());
        };
        if self.verified.lock().contains(&index) {
            return Ok(());
        }
        let master = &self.masters[index];
        let url = format!("http://{master}/admin/getIp");
        let resp = self
            .client
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(super::transport_failure)?;
        if resp.status().as_u16() != 200 {
            return Err(Verdict::transient(
                TransientKind::Unexpected,
                format!("{master} /admin/getIp: HTTP {}", resp.status().as_u16()),
            ));
        }
        let body = super::read_body(resp, BODY_LIMIT).await?;
        match cluster_name(&body) {
            Some(c) if c == *expected => {
                self.verified.lock().insert(index);
                Ok(())
            }
            Some(c) => Err(Verdict::transient(
                TransientKind::WrongCluster,
                format!("{master} belongs to cluster {c:?}, expected {expected:?}"),
            )),
            None => Err(Verdict::transient(
                TransientKind::Malformed,
                format!("{master} /admin/getIp: {}", super::excerpt(&body)),
            )),
        }
    }
}

impl Probe for CubefsProbe {
    fn kind(&self) -> &'static str {
        "cubefs"
    }

    fn authority(&self) -> Authority {
        Authority::Master
    }

    fn check(&self) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            let mut last = Verdict::transient(TransientKind::Down, "no master configured");
            for index in self.order() {
                let master = &self.masters[index];
                let answer = self.ask(master).await;
                if !answer.decisive {
                    tracing::trace!(master, verdict = %answer.verdict, "master answer not decisive");
                    last = answer.verdict;
                    continue;
                }
                // Any decisive answer, healthy ones too, counts only from the right cluster (checked
                // once per master): a wrong `cluster` must not pass unnoticed until a deletion.
                if let Err(v) = self.same_cluster(index).await {
                    last = v;
                    continue;
                }
                self.last_good.store(index, Ordering::Relaxed);
                return answer.verdict;
            }
            match last {
                Verdict::Transient { kind, detail } if self.masters.len() > 1 => {
                    Verdict::Transient {
                        kind,
                        detail: format!(
                            "no authoritative answer from {} masters; last: {detail}",
                            self.masters.len()
                        ),
                    }
                }
                other => other,
            }
        })
    }
}

/// Classify one HTTP answer of `/admin/getVol` (`now` and `skew` judge `DeleteExecTime`).
pub fn classify(status: u16, body: &[u8], now: SystemTime, skew: Duration, source: &str) -> Answer {
    let transient = |kind, detail: String| Answer {
        verdict: Verdict::transient(kind, format!("{source}: {detail}")),
        decisive: false,
    };
    match status {
        200 => {}
        400 if body.trim_ascii() == b"no leader" => {
            return transient(TransientKind::NoLeader, "400 no leader".into());
        }
        400 => {
            return transient(
                TransientKind::LeaderNotReady,
                format!("400 {}", super::excerpt(body)),
            );
        }
        404 => {
            return transient(
                TransientKind::WrongEndpoint,
                "404: not a CubeFS master?".into(),
            );
        }
        405 => {
            return transient(
                TransientKind::WrongEndpoint,
                "405 method not allowed".into(),
            );
        }
        429 => return transient(TransientKind::RateLimited, "429 rate limited".into()),
        502 => {
            return transient(
                TransientKind::Proxy,
                "502 follower cannot reach the leader".into(),
            );
        }
        500..=599 => return transient(TransientKind::ServerError, format!("HTTP {status}")),
        other => return transient(TransientKind::Unexpected, format!("HTTP {other}")),
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(body) else {
        return transient(
            TransientKind::Malformed,
            format!("200 without a JSON envelope: {}", super::excerpt(body)),
        );
    };
    let Some(code) = envelope.get("code").and_then(Value::as_i64) else {
        return transient(
            TransientKind::Malformed,
            format!("200 without an integer code: {}", super::excerpt(body)),
        );
    };
    let msg = envelope.get("msg").and_then(Value::as_str).unwrap_or("");
    let evidence = |detail: String| Evidence {
        source: source.to_string(),
        detail,
        strength: Strength::Strong,
        detached: false,
    };
    match code {
        0 => {}
        7 => {
            return Answer {
                verdict: Verdict::Deleted(evidence(format!("code 7 {msg:?}"))),
                decisive: true,
            };
        }
        1 => return transient(TransientKind::ServerError, format!("code 1 {msg:?}")),
        2 => {
            return transient(
                TransientKind::Unexpected,
                format!("code 2 (bad request) {msg:?}"),
            );
        }
        32 | 34 => return transient(TransientKind::Auth, format!("code {code} {msg:?}")),
        31 | 33 => return transient(TransientKind::NoLeader, format!("code {code} {msg:?}")),
        other => return transient(TransientKind::Unexpected, format!("code {other} {msg:?}")),
    }
    let Some(data) = envelope.get("data").filter(|d| d.is_object()) else {
        return transient(
            TransientKind::Malformed,
            "code 0 without a volume object".into(),
        );
    };
    let forbidden = match data.get("Forbidden") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return transient(
                TransientKind::Malformed,
                "Forbidden is not a boolean".into(),
            );
        }
    };
    match data.get("Status").and_then(Value::as_u64) {
        Some(0) => Answer {
            verdict: Verdict::Healthy {
                note: (forbidden == Some(true)).then(|| "writes forbidden (read-only)".to_string()),
            },
            decisive: true,
        },
        Some(1) => match forbidden {
            Some(false) => Answer {
                verdict: Verdict::Deleted(evidence("Status 1: marked for deletion".into())),
                decisive: true,
            },
            Some(true) => {
                let exec = data.get("DeleteExecTime").and_then(Value::as_str);
                match exec.map(parse_exec_time) {
                    Some(Some(ExecTime::Unset)) => Answer {
                        verdict: Verdict::Deleted(evidence(
                            "Status 1, Forbidden, no DeleteExecTime".into(),
                        )),
                        decisive: true,
                    },
                    Some(Some(ExecTime::At(at))) if at + skew <= now => Answer {
                        verdict: Verdict::Deleted(evidence(format!(
                            "Status 1: delayed deletion due at {}",
                            exec.unwrap_or_default()
                        ))),
                        decisive: true,
                    },
                    Some(Some(ExecTime::At(_))) => Answer {
                        verdict: Verdict::PendingDelete(evidence(format!(
                            "Status 1, Forbidden: deletion scheduled for {}",
                            exec.unwrap_or_default()
                        ))),
                        decisive: true,
                    },
                    _ => transient(
                        TransientKind::Malformed,
                        "Status 1 with an unreadable DeleteExecTime".into(),
                    ),
                }
            }
            None => transient(
                TransientKind::Malformed,
                "Status 1 without Forbidden".into(),
            ),
        },
        _ => transient(
            TransientKind::Malformed,
            "code 0 without Status 0 or 1".into(),
        ),
    }
}

enum ExecTime {
    Unset,
    At(SystemTime),
}

/// `DeleteExecTime`: RFC 3339 with nanoseconds, in UTC (`Z`) or with a numeric offset (a master
/// running in another time zone writes `+08:00`), or Go's zero time for "unset".
fn parse_exec_time(s: &str) -> Option<ExecTime> {
    if s.starts_with("0001-01-01T00:00:00") {
        return Some(ExecTime::Unset);
    }
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(ExecTime::At(SystemTime::from(t)))
}

/// The `Cluster` field of an `/admin/getIp` answer.
pub fn cluster_name(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("code").and_then(Value::as_i64) != Some(0) {
        return None;
    }
    v.get("data")?.get("Cluster")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_exec_time_with_an_offset() {
        let at = |s: &str| match parse_exec_time(s) {
            Some(ExecTime::At(t)) => t,
            _ => panic!("{s} not parsed"),
        };
        let utc = at("2026-11-30T12:00:00.123456789Z");
        assert_eq!(at("2026-11-30T20:00:00.123456789+08:00"), utc);
        assert_eq!(at("2026-11-30T06:30:00.123456789-05:30"), utc);
        assert!(matches!(
            parse_exec_time("0001-01-01T00:00:00+08:00"),
            Some(ExecTime::Unset)
        ));
        for bad in [
            "2026-11-30T20:00:00+8:00",
            "2026-11-30T20:00:00",
            "nonsense",
            "",
        ] {
            assert!(parse_exec_time(bad).is_none(), "{bad}");
        }
    }

    const HEALTHY: &str = r#"{"code":0,"msg":"success","data":{"ID":4,"Name":"vol1","Owner":"cfsuser","Status":0,"Capacity":10,"Forbidden":false,"DeleteExecTime":"0001-01-01T00:00:00Z","VolType":0}}"#;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn run(status: u16, body: &str) -> Answer {
        classify(
            status,
            body.as_bytes(),
            at("2026-11-24T23:40:00Z"),
            Duration::from_secs(30),
            "m",
        )
    }

    #[test]
    fn table_of_section_11() {
        assert_eq!(run(200, HEALTHY).verdict, Verdict::healthy());
        let ro = HEALTHY.replace("\"Forbidden\":false", "\"Forbidden\":true");
        assert!(matches!(
            run(200, &ro).verdict,
            Verdict::Healthy { note: Some(_) }
        ));
        let marked = HEALTHY.replace("\"Status\":0", "\"Status\":1");
        assert!(matches!(run(200, &marked).verdict, Verdict::Deleted(_)));
        let pending = marked
            .replace("\"Forbidden\":false", "\"Forbidden\":true")
            .replace("0001-01-01T00:00:00Z", "2026-11-26T23:38:06.164518667Z");
        let a = run(200, &pending);
        assert!(matches!(a.verdict, Verdict::PendingDelete(_)), "{a:?}");
        assert!(a.decisive);
        let expired = pending.replace("2026-11-26T23:38:06.164518667Z", "2026-11-24T22:00:00.1Z");
        assert!(
            matches!(run(200, &expired).verdict, Verdict::Deleted(_)),
            "{expired}"
        );
        let gone = r#"{"code":7,"msg":"vol not exists","data":null}"#;
        let a = run(200, gone);
        assert!(matches!(a.verdict, Verdict::Deleted(_)) && a.decisive);
    }

    #[test]
    fn skew_protects_a_deadline_that_just_passed() {
        let pending = HEALTHY
            .replace("\"Status\":0", "\"Status\":1")
            .replace("\"Forbidden\":false", "\"Forbidden\":true")
            .replace("0001-01-01T00:00:00Z", "2026-11-24T23:39:50Z");
        // Ten seconds past, inside the 30 s skew: still pending.
        assert!(matches!(
            run(200, &pending).verdict,
            Verdict::PendingDelete(_)
        ));
    }

    #[test]
    fn everything_else_is_transient() {
        let cases: &[(u16, &str, TransientKind)] = &[
            (400, "no leader\n", TransientKind::NoLeader),
            (400, "127.0.0.1:17010\n", TransientKind::LeaderNotReady),
            (404, "404 page not found\n", TransientKind::WrongEndpoint),
            (405, "", TransientKind::WrongEndpoint),
            (
                429,
                "too many requests for api: /admin/getVol\n",
                TransientKind::RateLimited,
            ),
            (502, "", TransientKind::Proxy),
            (503, "", TransientKind::ServerError),
            (200, "not json", TransientKind::Malformed),
            (
                200,
                r#"{"code":0,"msg":"success","data":{"Na"#,
                TransientKind::Malformed,
            ),
            (
                200,
                r#"{"code":0,"msg":"success","data":{"Status":2}}"#,
                TransientKind::Malformed,
            ),
            (
                200,
                r#"{"code":0,"msg":"success","data":{"Name":"x"}}"#,
                TransientKind::Malformed,
            ),
            (
                200,
                r#"{"code":0,"msg":"success","data":{"Status":1}}"#,
                TransientKind::Malformed,
            ),
            (
                200,
                r#"{"code":0,"msg":"success","data":null}"#,
                TransientKind::Malformed,
            ),
            (200, r#"{"code":"7"}"#, TransientKind::Malformed),
            (
                200,
                r#"{"code":1,"msg":"internal","data":null}"#,
                TransientKind::ServerError,
            ),
            (
                200,
                r#"{"code":2,"msg":"parameter name not found","data":null}"#,
                TransientKind::Unexpected,
            ),
            (
                200,
                r#"{"code":31,"msg":"no leader","data":null}"#,
                TransientKind::NoLeader,
            ),
            (
                200,
                r#"{"code":33,"msg":"no leader","data":null}"#,
                TransientKind::NoLeader,
            ),
            (
                200,
                r#"{"code":34,"msg":"auth","data":null}"#,
                TransientKind::Auth,
            ),
            (
                200,
                r#"{"code":8,"msg":"repeated","data":null}"#,
                TransientKind::Unexpected,
            ),
        ];
        for (status, body, kind) in cases {
            let a = run(*status, body);
            assert!(!a.decisive, "{status} {body}");
            match a.verdict {
                Verdict::Transient { kind: k, .. } => assert_eq!(k, *kind, "{status} {body}"),
                v => panic!("{status} {body}: {v:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let extra = HEALTHY.replace("\"VolType\":0", "\"VolType\":0,\"BrandNew\":{\"x\":[1,2]}");
        assert_eq!(run(200, &extra).verdict, Verdict::healthy());
    }

    #[test]
    fn cluster_name_parses() {
        let body = br#"{"code":0,"msg":"success","data":{"Cluster":"c1","Ip":"127.0.0.1"}}"#;
        assert_eq!(cluster_name(body).as_deref(), Some("c1"));
        assert_eq!(cluster_name(b"garbage"), None);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_nor_delete(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let a = classify(status, &body, SystemTime::now(), Duration::ZERO, "m");
                prop_assert!(!matches!(a.verdict, Verdict::Deleted(_) | Verdict::PendingDelete(_)));
            }

            #[test]
            fn mangled_envelopes_never_delete(cut in 0usize..HEALTHY.len(), flip in 0usize..HEALTHY.len(), byte in any::<u8>()) {
                // Truncated healthy bodies, and healthy bodies with one byte changed.
                let truncated = &HEALTHY.as_bytes()[..cut];
                let a = classify(200, truncated, SystemTime::now(), Duration::ZERO, "m");
                prop_assert!(!matches!(a.verdict, Verdict::Deleted(_) | Verdict::PendingDelete(_)));
                let mut flipped = HEALTHY.as_bytes().to_vec();
                flipped[flip] = byte;
                let a = classify(200, &flipped, SystemTime::now(), Duration::ZERO, "m");
                // Only a digit turned into another digit can change a code or a status into a
                // deletion; every other corruption must stay non-deleting.
                let forged = byte.is_ascii_digit() && HEALTHY.as_bytes()[flip].is_ascii_digit();
                prop_assert!(forged || !matches!(a.verdict, Verdict::Deleted(_) | Verdict::PendingDelete(_)), "{}", String::from_utf8_lossy(&flipped));
            }
        }
    }
}
