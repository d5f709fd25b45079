//! `failoverfs check`: open each volume once and report whether it could serve.

use std::io::Write;

use crate::config::Settings;

/// One row of the report.
#[derive(Debug, Clone)]
pub struct VolumeReport {
    /// Volume name.
    pub name: String,
    /// `primary` or `standby N`.
    pub role: String,
    /// Backend description.
    pub backend: String,
    /// Whether the volume can serve.
    pub usable: bool,
    /// Why not (or `-`).
    pub reason: String,
}

/// Open every volume once.
pub fn check(settings: &Settings) -> Vec<VolumeReport> {
    settings
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (usable, reason) = match crate::backend::open(&v.backend) {
                Ok(b) => match b.statfs() {
                    Ok(_) => (true, "-".to_string()),
                    Err(e) => (false, format!("statfs failed: {e}")),
                },
                Err(e) => (false, format!("cannot open: {e}")),
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
            }
        })
        .collect()
}

/// Print the report as a table.
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
    Ok(())
}
