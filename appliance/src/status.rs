//! The status file: a few lines of plain text on the FAT `boot` partition,
//! for a partner who takes the card out and reads it on any computer (or
//! finds the box's address there). The box is its only writer; it rewrites
//! the file when something in it changes, never just because time passed,
//! so an idle box does not wear the card.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::net::if_::InterfaceFlags;
use tracing::warn;

/// How often the box's addresses are looked at (DHCP may change them).
const ADDRESS_CHECK: Duration = Duration::from_secs(60);

/// A clock before this (2020-01-01) has not been set since power-on: the
/// boards have no battery-backed clock.
const CLOCK_SET_AFTER: Duration = Duration::from_secs(1_577_836_800);

/// One line of the file. The order here is the order in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// Software version and revision.
    Version,
    /// The slot running, and what the box made of it.
    Slot,
    /// `BOOT_ORDER` and the tries left.
    BootOrder,
    /// An installed update waiting for its reboot, or the last install.
    Update,
    /// The last update that rolled back, and why.
    LastRollback,
    /// The box's own addresses.
    Addresses,
    /// Where the health answer is.
    Health,
}

impl Field {
    fn label(self) -> &'static str {
        match self {
            Field::Version => "version",
            Field::Slot => "slot",
            Field::BootOrder => "boot order",
            Field::Update => "update",
            Field::LastRollback => "last rollback",
            Field::Addresses => "addresses",
            Field::Health => "health",
        }
    }
}

/// The status file and what it says. Cheap to clone; every clone writes the
/// same file.
#[derive(Debug, Clone)]
pub struct Status {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    fields: Mutex<BTreeMap<Field, String>>,
    /// The body (everything but the time line) last written, so an
    /// unchanged status is not written again.
    written: Mutex<Option<String>>,
}

impl Status {
    /// A status written to `path`. Nothing is written until a field is set.
    pub fn new(path: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                fields: Mutex::new(BTreeMap::new()),
                written: Mutex::new(None),
            }),
        }
    }

    /// Sets `field` and rewrites the file if that changed it. A failed
    /// write is logged: the status file is for people, the box goes on
    /// without it.
    pub async fn set(&self, field: Field, value: impl Into<String>) {
        self.update([(field, Some(value.into()))]).await;
    }

    /// Clears `field`, rewriting the file if it was set.
    pub async fn clear(&self, field: Field) {
        self.update([(field, None)]).await;
    }

    /// Sets (`Some`) or clears (`None`) several fields, and rewrites the
    /// file once if that changed it, so a reader never sees half of them.
    pub async fn update(&self, changes: impl IntoIterator<Item = (Field, Option<String>)>) {
        let mut changed = false;
        {
            let mut fields = lock(&self.inner.fields);
            for (field, value) in changes {
                if fields.get(&field) == value.as_ref() {
                    continue;
                }
                changed = true;
                match value {
                    Some(value) => fields.insert(field, value),
                    None => fields.remove(&field),
                };
            }
        }
        if changed {
            self.flush().await;
        }
    }

    async fn flush(&self) {
        let inner = Arc::clone(&self.inner);
        let written = tokio::task::spawn_blocking(move || inner.write_if_changed()).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(path = %self.inner.path.display(), error = %e, "cannot write the status file")
            }
            Err(e) => warn!(error = %e, "status writer failed"),
        }
    }

    /// Keeps the addresses line current, looking every minute; runs forever.
    pub async fn track_addresses(self, port: u16) {
        loop {
            let addresses = addresses();
            let line = if addresses.is_empty() {
                "none yet (no network, or DHCP has not answered)".to_owned()
            } else {
                let all: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                all.join(", ")
            };
            let health = addresses.first().map(|ip| health_url(*ip, port));
            self.update([(Field::Addresses, Some(line)), (Field::Health, health)])
                .await;
            tokio::time::sleep(ADDRESS_CHECK).await;
        }
    }
}

impl Inner {
    fn write_if_changed(&self) -> io::Result<()> {
        let body = render_body(&lock(&self.fields));
        let mut written = lock(&self.written);
        if written.as_deref() == Some(body.as_str()) {
            return Ok(());
        }
        let text = format!("{}{body}", time_line(SystemTime::now()));
        crate::durable::replace(&self.path, text.as_bytes())?;
        *written = Some(body);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One `label: value` line per field, the values aligned.
fn render_body(fields: &BTreeMap<Field, String>) -> String {
    let mut text = String::new();
    for (field, value) in fields {
        let _ = writeln!(text, "{:<14} {value}", format!("{}:", field.label()));
    }
    text
}

/// The first lines: what the file is, and when it was written.
fn time_line(now: SystemTime) -> String {
    let when = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since >= CLOCK_SET_AFTER => humantime::format_rfc3339_seconds(now).to_string(),
        _ => "clock not set yet".to_owned(),
    };
    format!(
        "Edge box status, written by the box itself; changes made here are lost.\n\
         {:<14} {when}\n",
        "written:"
    )
}

/// The box's addresses a partner could reach: every interface that is up,
/// without loopback and link-local addresses, IPv4 first.
fn addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut found: Vec<IpAddr> = interfaces
        .filter(|interface| interface.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| reachable(*ip))
        .collect();
    found.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    found.dedup();
    found
}

fn reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && !v6.is_unicast_link_local(),
    }
}

fn health_url(ip: IpAddr, port: u16) -> String {
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    match port {
        443 => format!("https://{host}/healthz"),
        port => format!("https://{host}:{port}/healthz"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn fields_come_in_their_order_aligned() {
        let mut fields = BTreeMap::new();
        fields.insert(Field::Addresses, "192.0.2.7".to_owned());
        fields.insert(Field::Version, "1.2.3 (abc)".to_owned());
        fields.insert(Field::Slot, "A, marked good".to_owned());
        assert_eq!(
            render_body(&fields),
            "version:       1.2.3 (abc)\n\
             slot:          A, marked good\n\
             addresses:     192.0.2.7\n"
        );
    }

    #[test]
    fn an_unset_clock_is_said_so() {
        let boot = SystemTime::UNIX_EPOCH + Duration::from_secs(42);
        assert!(time_line(boot).contains("written:       clock not set yet\n"));
        let set = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_342_400);
        assert!(time_line(set).contains("written:       2026-12-04T00:00:00Z\n"));
    }

    #[test]
    fn health_urls_name_the_port_unless_it_is_443() {
        assert_eq!(
            health_url("192.0.2.7".parse().expect("an address"), 443),
            "https://192.0.2.7/healthz"
        );
        assert_eq!(
            health_url("2001:db8::7".parse().expect("an address"), 8443),
            "https://[2001:db8::7]:8443/healthz"
        );
    }

    #[test]
    fn loopback_and_link_local_addresses_are_left_out() {
        for ip in ["127.0.0.1", "169.254.1.1", "::1", "fe80::1", "0.0.0.0"] {
            assert!(!reachable(ip.parse().expect("an address")), "{ip}");
        }
        for ip in ["10.0.2.15", "192.0.2.7", "2001:db8::7"] {
            assert!(reachable(ip.parse().expect("an address")), "{ip}");
        }
    }

    #[tokio::test]
    async fn an_unchanged_status_is_not_written_again() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("status.txt");
        let status = Status::new(path.clone());
        assert!(!path.exists(), "written before anything was set");

        status.set(Field::Version, "1.2.3").await;
        let first = fs::read_to_string(&path).expect("status written");
        assert!(first.starts_with("Edge box status"), "{first}");
        assert!(first.ends_with("version:       1.2.3\n"), "{first}");

        // Put something else in its place: only a change rewrites it.
        fs::write(&path, "edited").expect("edit the file");
        status.set(Field::Version, "1.2.3").await;
        assert_eq!(fs::read_to_string(&path).expect("read the file"), "edited");

        status.set(Field::Slot, "A").await;
        let second = fs::read_to_string(&path).expect("status rewritten");
        assert!(
            second.ends_with("version:       1.2.3\nslot:          A\n"),
            "{second}"
        );
        status.clear(Field::Slot).await;
        let third = fs::read_to_string(&path).expect("status rewritten");
        assert!(third.ends_with("version:       1.2.3\n"), "{third}");

        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list the directory")
            .map(|e| e.expect("a directory entry").file_name())
            .collect();
        assert_eq!(leftovers, ["status.txt"], "temporary files left behind");
    }

    #[tokio::test]
    async fn several_fields_land_in_one_write() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("status.txt");
        let status = Status::new(path.clone());
        status
            .set(Field::Update, "0.9.0 installed into slot B")
            .await;
        status
            .update([
                (Field::Slot, Some("B, marked good".to_owned())),
                (Field::BootOrder, Some("B A".to_owned())),
                (Field::Update, None),
            ])
            .await;
        let text = fs::read_to_string(&path).expect("read the file");
        assert!(
            text.ends_with("slot:          B, marked good\nboot order:    B A\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_status_that_cannot_be_written_does_not_stop_the_box() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let status = Status::new(dir.path().join("missing/status.txt"));
        status.set(Field::Version, "1.2.3").await;
        assert!(!dir.path().join("missing").exists());
    }
}
