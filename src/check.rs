//! `failoverfs check`: open each volume once, run its probes once, and report whether it could
//! serve.

use std::io::Write;

use crate::config::Settings;
use crate::exit::Exit;
use crate::probe::Verdict;

/// One row of the report.
#[derive(Debug, Clone)]
pub struct VolumeReport {
    /// Volume name.
    pub name: String,
    /// `primary` or `standby N`.
    pub role: String,
    /// Backend description.
    pub backend: String,
    /// Whether the volume can serve: it opens, and no probe says it is (being) deleted.
    pub usable: bool,
    /// Why not (or `-`).
    pub reason: String,
    /// Each probe's answer, and the combined verdict.
    pub probes: Vec<(&'static str, Verdict)>,
    /// The combined verdict.
    pub verdict: Verdict,
}

/// Open every volume once and probe it once.
pub fn check(settings: &Settings) -> Vec<VolumeReport> {
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|rt| crate::probe::http_client().map(|c| (rt, c)));
    let (runtime, client) = match setup {
        Ok(both) => both,
        Err(e) => {
            return settings
                .volumes
                .iter()
                .map(|v| VolumeReport {
                    name: v.name.clone(),
                    role: "-".into(),
                    backend: v.backend.to_string(),
                    usable: false,
                    reason: e.clone(),
                    probes: Vec::new(),
                    verdict: Verdict::transient(
                        crate::probe::TransientKind::Unexpected,
                        "not probed",
                    ),
                })
                .collect();
        }
    };
    settings
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let opened = crate::backend::open(&v.backend).and_then(|b| {
                b.statfs().map_err(std::io::Error::from)?;
                Ok(())
            });
            let policy = settings.health.with(&v.health);
            let probes = crate::probe::build(v, &policy, &client, None);
            let (verdict, answers) =
                runtime.block_on(crate::monitor::probe_once(&probes, policy.timeout));
            let (usable, reason) = match (&opened, &verdict) {
                (Err(e), _) => (false, format!("cannot open: {e}")),
                (Ok(()), Verdict::Deleted(e)) => (false, format!("deleted: {e}")),
                (Ok(()), Verdict::PendingDelete(e)) => (false, format!("deletion pending: {e}")),
                (Ok(()), Verdict::Transient { .. }) => {
                    (true, format!("probe inconclusive: {verdict}"))
                }
                (Ok(()), Verdict::Healthy { .. }) => (true, "-".to_string()),
            };
            VolumeReport {
                name: v.name.clone(),
                role: if i == 0 {
                    "primary".into()
                } else {
                    format!("standby {i}")
                },
                backend: v.backend.to_string(),
                usable,
                reason,
                probes: answers,
                verdict,
            }
        })
        .collect()
}

/// How `check` ends: [`Exit::Failure`] when a volume cannot serve (it does not open, or its
/// probes say it is deleted), else [`Exit::Inconclusive`] when some volume's probes reached
/// nothing authoritative, else [`Exit::Clean`] (every volume answered healthy with authority).
pub fn exit_code(rows: &[VolumeReport]) -> Exit {
    if rows.is_empty() || rows.iter().any(|r| !r.usable) {
        Exit::Failure
    } else if rows
        .iter()
        .any(|r| !matches!(r.verdict, Verdict::Healthy { .. }))
    {
        Exit::Inconclusive
    } else {
        Exit::Clean
    }
}

/// Print the report as a table, then each probe's answer.
pub fn print(out: &mut dyn Write, rows: &[VolumeReport]) -> std::io::Result<()> {
    let headers = ["NAME", "ROLE", "BACKEND", "USABLE", "REASON"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.role.clone(),
                r.backend.clone(),
                if r.usable { "yes" } else { "no" }.to_string(),
                r.reason.clone(),
            ]
        })
        .collect();
    let mut width = headers.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |out: &mut dyn Write, row: [&str; 5]| -> std::io::Result<()> {
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            if i == 4 {
                writeln!(out, "{c}")?;
            } else {
                write!(out, "{c:<w$}  ")?;
            }
        }
        Ok(())
    };
    line(out, headers)?;
    for row in &cells {
        line(out, [&row[0], &row[1], &row[2], &row[3], &row[4]])?;
    }
    writeln!(out)?;
    writeln!(out, "PROBES")?;
    for r in rows {
        for (kind, v) in &r.probes {
            writeln!(out, "{}  {kind}: {v}", r.name)?;
        }
    }
    Ok(())
}
