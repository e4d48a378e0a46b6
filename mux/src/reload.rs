//! Certificates from PEM files, reloaded when the files change or on request.
//!
//! The files are watched through their directories, because the usual way to
//! replace a certificate (write a new file, rename it over the old one) swaps
//! the inode a watch on the file itself would follow. Only events that can
//! mean new content count: opening and reading a file do not, or the reload's
//! own reads would start the next reload. A reload replaces every file
//! certificate at once, or none: if any pair fails to load, the previous set
//! stays in service and the failure is logged and counted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::certs::{leaf_names, load_pem, CertStore, Entry, Source};
use crate::config::CertFileConfig;
use crate::metrics::{Metrics, Reason};
use crate::Error;

/// How long to wait after a change for the writer to finish.
const SETTLE: Duration = Duration::from_millis(200);

/// Loads every configured certificate file pair.
pub fn load_files(configs: &[CertFileConfig]) -> Result<Vec<Entry>, Error> {
    configs.iter().map(load_one).collect()
}

fn load_one(config: &CertFileConfig) -> Result<Entry, Error> {
    let key = load_pem(&config.cert, &config.key)?;
    let names = match &config.names {
        Some(names) => names.clone(),
        None => leaf_names(&key)?,
    };
    Ok(Entry { names, key })
}

/// Reloads file certificates into `store` whenever a file changes or `hup`
/// is notified (the binary wires SIGHUP to it). Runs until dropped.
pub async fn run(
    configs: Vec<CertFileConfig>,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    hup: Arc<Notify>,
) -> Result<(), Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watched: BTreeSet<PathBuf> = configs
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect();
    let files = watched.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let touches_ours = event
            .map(|e| may_change(&e.kind) && e.paths.iter().any(|p| files.contains(p)))
            .unwrap_or(true);
        if touches_ours {
            let _ = tx.send(());
        }
    })
    .map_err(|e| Error::Certificate(format!("cannot watch certificate files: {e}")))?;
    for dir in parent_dirs(&watched) {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| Error::Certificate(format!("cannot watch {}: {e}", dir.display())))?;
    }

    loop {
        tokio::select! {
            changed = rx.recv() => {
                if changed.is_none() {
                    return Ok(());
                }
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = hup.notified() => {}
        }
        reload(&configs, &store, &metrics);
    }
}

fn reload(configs: &[CertFileConfig], store: &CertStore, metrics: &Metrics) {
    match load_files(configs) {
        Ok(entries) => {
            info!(certificates = entries.len(), "certificate files reloaded");
            store.replace(Source::Files, entries);
            metrics
                .cert_reloads
                .get_or_create(&Reason { reason: "ok" })
                .inc();
        }
        Err(e) => {
            warn!(error = %e, "certificate reload failed, keeping the previous certificates");
            metrics
                .cert_reloads
                .get_or_create(&Reason { reason: "error" })
                .inc();
        }
    }
}

/// Whether a watch event can mean the file's content changed.
///
/// inotify also reports opens and read-only closes; `reload` opens every
/// file, so counting those would reload again [`SETTLE`] after each reload,
/// for as long as the box runs. A close after writing does count: it is how
/// an in-place write ends.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn parent_dirs(files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reading_a_file_is_not_a_change() {
        let read = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ];
        for kind in read {
            assert!(!may_change(&kind), "{kind:?}");
        }
    }

    #[test]
    fn writes_renames_and_removals_are_changes() {
        let changes = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ];
        for kind in changes {
            assert!(may_change(&kind), "{kind:?}");
        }
    }
}
