//! Child processes that must not outlive a test (the box under qemu-user, the
//! QEMU system emulator), the serial console they print, and scratch files.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;

/// Owns a child process and kills it when dropped, including when the test
/// panics, so a failed test never leaves an emulator running.
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    child: Child,
}

impl ProcessGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, Error> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("could not kill {}: {e}", self.name);
            }
        }
        // Reap it so no zombie stays behind for the rest of the test run.
        let _ = self.child.wait();
    }
}

/// Lines of a child's output, read on a thread of their own so the test can
/// wait for a line with a timeout. Everything read is kept for the failure
/// message.
#[derive(Debug)]
pub struct Console {
    lines: Receiver<String>,
    transcript: Arc<Mutex<Vec<String>>>,
}

impl Console {
    /// Starts reading `output` (a child's stdout or stderr) line by line.
    pub fn new(output: impl Read + Send + 'static) -> Self {
        let (sender, lines) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&transcript);
        thread::spawn(move || {
            let mut reader = BufReader::new(output);
            let mut raw = Vec::new();
            // Serial consoles end lines with "\r\n" and may send bytes that are
            // not UTF-8; neither should stop the reader.
            while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                raw.clear();
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line.clone());
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines, transcript }
    }

    /// Waits for a line containing `marker`. Fails at once on a line
    /// containing any of `fatal`, or when the output ends (the process died).
    pub fn wait_for(
        &self,
        marker: &str,
        fatal: &[&str],
        timeout: Duration,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Ok(line),
                Ok(line) if fatal.iter().any(|f| line.contains(f)) => {
                    return Err(Error::Console(format!(
                        "gave up waiting for {marker:?} after {line:?}"
                    )))
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout(timeout, format!("no line with {marker:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Console(format!("output ended before {marker:?}")))
                }
            }
        }
    }

    /// Everything read so far, one line per line.
    pub fn transcript(&self) -> String {
        match self.transcript.lock() {
            Ok(lines) => lines.join("\n"),
            Err(_) => String::from("(transcript unavailable)"),
        }
    }
}

/// A private directory under the system temporary directory, removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> Result<Self, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("edge-tests-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn console_finds_marker_and_keeps_transcript() {
        let child = Command::new("sh")
            .args(["-c", "printf 'boot\\r\\nedge-rig: up\\r\\nafter\\n'"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut guard = ProcessGuard::new("sh", child);
        let stdout = guard.child_mut().stdout.take().expect("stdout was piped");
        let console = Console::new(stdout);

        let line = console
            .wait_for("edge-rig: up", &[], Duration::from_secs(10))
            .expect("marker line");
        assert_eq!(line, "edge-rig: up");
        assert!(console.transcript().starts_with("boot\nedge-rig: up"));
    }

    #[test]
    fn console_fails_fast_on_fatal_line_and_on_eof() {
        let child = Command::new("sh")
            .args(["-c", "echo 'edge-rig: edge exited with status 1'"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut guard = ProcessGuard::new("sh", child);
        let stdout = guard.child_mut().stdout.take().expect("stdout was piped");
        let console = Console::new(stdout);

        let start = Instant::now();
        assert!(console
            .wait_for("edge running", &["edge exited"], Duration::from_secs(30))
            .is_err());
        assert!(console
            .wait_for("edge running", &[], Duration::from_secs(30))
            .is_err());
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn guard_kills_on_drop() {
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(ProcessGuard::new("sleep", child));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn scratch_dir_is_removed_on_drop() {
        let dir = ScratchDir::new("unit").expect("create scratch dir");
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }
}
