//! Polling a channel for new versions.
//!
//! A channel is one small JSON document at an HTTPS URL, which the operator
//! replaces to publish a release:
//!
//! ```json
//! {"version": "1.2.0", "compatible": "edge-rpi4-aarch64",
//!  "url": "https://updates.example.org/edge-1.2.0.bundle"}
//! ```
//!
//! The box installs what it names when the version is newer than the one it
//! runs, meant for its target, and has not rolled back here before. The
//! document is not signed: the bundle is, and nothing the document says is
//! trusted beyond where to fetch it and whether to bother.

use semver::Version;
use serde::Deserialize;

use super::state::UpdateState;

/// The channel document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Release {
    /// Software version of the bundle, semantic.
    pub version: String,
    /// Target compatibility string of the bundle.
    pub compatible: String,
    /// Where the bundle is (`https://`).
    pub url: String,
}

/// What to do about a channel's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Install it.
    Install,
    /// Nothing to do, and why.
    Skip(String),
}

/// Parses a channel document.
pub fn parse(document: &[u8]) -> Result<Release, String> {
    serde_json::from_slice(document).map_err(|e| format!("channel document: {e}"))
}

/// Decides about `release` for a box running `running`, built for
/// `compatible`, with the updater's record `state`.
pub fn decide(release: &Release, running: &str, compatible: &str, state: &UpdateState) -> Decision {
    if release.compatible != compatible {
        return Decision::Skip(format!("release is for {}", release.compatible));
    }
    let (Ok(offered), Ok(running)) = (Version::parse(&release.version), Version::parse(running))
    else {
        return Decision::Skip(format!("version {} is not semantic", release.version));
    };
    if offered <= running {
        return Decision::Skip(format!("{offered} is not newer than {running}"));
    }
    if state.has_failed(&release.version) {
        return Decision::Skip(format!("{offered} rolled back before"));
    }
    if state
        .pending
        .as_ref()
        .is_some_and(|p| p.version == release.version)
    {
        return Decision::Skip(format!("{offered} is installed and waiting for a reboot"));
    }
    Decision::Install
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> Release {
        Release {
            version: version.into(),
            compatible: "edge-test".into(),
            url: "https://updates.example.org/b".into(),
        }
    }

    #[test]
    fn only_newer_compatible_versions_that_never_failed_are_installed() {
        let state = UpdateState::default();
        assert_eq!(
            decide(&release("1.2.0"), "1.1.9", "edge-test", &state),
            Decision::Install
        );
        assert!(matches!(
            decide(&release("1.1.9"), "1.1.9", "edge-test", &state),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(&release("1.0.0"), "1.1.9", "edge-test", &state),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(&release("1.2.0"), "1.1.9", "edge-other", &state),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(&release("latest"), "1.1.9", "edge-test", &state),
            Decision::Skip(_)
        ));

        let failed = UpdateState {
            failed_versions: vec!["1.2.0".into()],
            ..UpdateState::default()
        };
        assert!(matches!(
            decide(&release("1.2.0"), "1.1.9", "edge-test", &failed),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn documents_parse_and_unknown_shapes_do_not() {
        let doc = br#"{"version":"1.2.0","compatible":"edge-test","url":"https://u/b"}"#;
        assert_eq!(
            parse(doc),
            Ok(Release {
                url: "https://u/b".into(),
                ..release("1.2.0")
            })
        );
        assert!(parse(b"<html>").is_err());
    }
}
