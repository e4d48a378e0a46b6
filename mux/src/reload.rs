//! Certificates from PEM files, reloaded when the files change or on request.
//!
//! The files are watched through their directories, because the usual way to
//! replace a certificate (write a new file, rename it over the old one) swaps
//! the inode a watch on the file itself would follow. A reload replaces every
//! file certificate at once, or none: if any pair fails to load, the previous
//! set stays in service and the failure is logged and counted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
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
            .map(|e| e.paths.iter().any(|p| files.contains(p)))
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

fn parent_dirs(files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        })
        .collect()
}
