//! Test-only fault hooks, read from the environment (`jepsen/README.md`):
//! `WEIR_JEPSEN_BUGS=name,...` switches planted bugs on, `WEIR_FSYNC_JOURNAL=FILE` journals
//! every fsynced file length. Both are honoured only by a binary built with the `jepsen-bugs`
//! feature; a binary without it refuses to start when either is set, so a test cannot
//! silently run without its fault.

use anyhow::Context;
use weir_faults::{bugs, journal};

pub fn init() -> anyhow::Result<()> {
    if let Ok(raw) = std::env::var("WEIR_JEPSEN_BUGS") {
        let list = bugs::parse_list(&raw).map_err(|e| anyhow::anyhow!("WEIR_JEPSEN_BUGS: {e}"))?;
        if !list.is_empty() {
            anyhow::ensure!(
                bugs::enable(list.clone()),
                "WEIR_JEPSEN_BUGS is set but this binary was built without the jepsen-bugs feature"
            );
            tracing::warn!(bugs = ?list, "PLANTED BUGS ARE ON: this node breaks its guarantees on purpose");
        }
    }
    if let Some(path) = std::env::var_os("WEIR_FSYNC_JOURNAL") {
        let path = std::path::PathBuf::from(path);
        let on = journal::enable(&path)
            .with_context(|| format!("WEIR_FSYNC_JOURNAL: open {}", path.display()))?;
        anyhow::ensure!(
            on,
            "WEIR_FSYNC_JOURNAL is set but this binary was built without the jepsen-bugs feature"
        );
        tracing::info!(path = %path.display(), "journaling fsynced file lengths");
    }
    Ok(())
}
