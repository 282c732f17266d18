//! The side-by-side report: one HTML page with inline SVG charts.
use crate::cli::ReportOpts;
use anyhow::Result;

pub(crate) fn write(_o: &ReportOpts) -> Result<()> {
    anyhow::bail!("report: not built yet")
}
