//! `edge-bundle`: the host tool that makes signing keys and builds,
//! verifies and inspects update bundles. docs/bundle.md describes the
//! format and the commands.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use image::bundle::{
    inspect_unverified, BundleHead, BundleReader, BundleSpec, Manifest, PayloadDigest,
    PayloadHasher, PayloadKind, PayloadStream, PayloadVerifier, DEFAULT_CHUNK_SIZE, HEADER_LEN,
};
use image::keys::{PublicKey, SigningKey};
use indicatif::{ProgressBar, ProgressStyle};

/// Size of each read and write.
const IO_BUF: usize = 256 * 1024;

/// File names `keygen` writes in its output directory.
const PRIVATE_KEY_FILE: &str = "bundle-signing.pem";
const PUBLIC_KEY_FILE: &str = "bundle-signing.pub";

#[derive(Debug, Parser)]
#[command(
    name = "edge-bundle",
    version,
    about = "Signed update bundles for the edge box"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an Ed25519 signing key: DIR/bundle-signing.pem (private,
    /// PKCS#8 PEM) and DIR/bundle-signing.pub (public, one line).
    Keygen {
        /// Directory to write the two files into; created if missing.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build and sign a bundle from a kernel and a rootfs partition image.
    Build {
        /// Private key file (PKCS#8, PEM or DER).
        #[arg(long)]
        key: PathBuf,
        /// Image of the slot's kernel partition.
        #[arg(long)]
        kernel: PathBuf,
        /// Image of the slot's rootfs partition.
        #[arg(long)]
        rootfs: PathBuf,
        /// Target compatibility string, e.g. edge-qemu-aarch64.
        #[arg(long)]
        compatible: String,
        /// Software version (semantic version).
        #[arg(long)]
        version: String,
        /// Security version: raise it to stop boxes going back to older bundles.
        #[arg(long)]
        security_version: u64,
        /// Chunk size in bytes: a multiple of 4096 up to 64 MiB.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle as the box does: signature, manifest, every chunk.
    Verify {
        /// Trusted public key file; repeat for several keys.
        #[arg(long, required = true)]
        pubkey: Vec<PathBuf>,
        /// Also require this target compatibility string.
        #[arg(long)]
        compatible: Option<String>,
        /// Also require at least this security version.
        #[arg(long)]
        min_security_version: Option<u64>,
        /// Bundle file.
        bundle: PathBuf,
    },
    /// Show a bundle's header and manifest without checking the signature.
    Inspect {
        /// Bundle file.
        bundle: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("edge-bundle: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen { out } => keygen(&out),
        Command::Build {
            key,
            kernel,
            rootfs,
            compatible,
            version,
            security_version,
            chunk_size,
            out,
        } => {
            let spec = BundleSpec {
                compatible,
                version,
                security_version,
                chunk_size,
            };
            build(&key, &spec, [&kernel, &rootfs], &out)
        }
        Command::Verify {
            pubkey,
            compatible,
            min_security_version,
            bundle,
        } => verify(
            &pubkey,
            compatible.as_deref(),
            min_security_version,
            &bundle,
        ),
        Command::Inspect { bundle } => inspect(&bundle),
    }
}

// --- keygen ------------------------------------------------------------------

fn keygen(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = SigningKey::generate()?;
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    write_new(&private, key.to_pem()?.as_bytes(), 0o600)?;
    write_new(&public, key.public_key().to_line().as_bytes(), 0o644)?;
    say(format_args!(
        "key id {}\nprivate key {}\npublic key {}",
        key.public_key().id(),
        private.display(),
        public.display()
    ))
}

/// Writes a file that must not exist yet: a key is never overwritten.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

// --- build -------------------------------------------------------------------

fn build(key: &Path, spec: &BundleSpec, payloads: [&Path; 2], out: &Path) -> Result<()> {
    let key = read_file(key).and_then(|bytes| Ok(SigningKey::parse(&bytes)?))?;
    let kernel = hash_file(payloads[0], spec.chunk_size, PayloadKind::Kernel)?;
    let rootfs = hash_file(payloads[1], spec.chunk_size, PayloadKind::Rootfs)?;
    let head = BundleHead::sign(spec, &kernel, &rootfs, &key)?;

    // Written beside the target and renamed at the end, so `out` is either
    // a whole bundle or absent.
    let partial = out.with_extension("partial");
    let written = write_bundle(&head, payloads, &partial);
    if let Err(err) = written {
        let _ = fs::remove_file(&partial);
        return Err(err);
    }
    fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))?;
    let manifest = head.manifest();
    say(format_args!(
        "wrote {} ({} bytes): {}",
        out.display(),
        manifest.file_len(),
        summary(manifest)
    ))
}

fn hash_file(path: &Path, chunk_size: u32, kind: PayloadKind) -> Result<PayloadDigest> {
    let mut hasher = PayloadHasher::new(chunk_size);
    copy_file(path, &format!("hashing {kind}"), |bytes| {
        hasher.update(bytes);
        Ok(())
    })?;
    Ok(hasher.finish())
}

fn write_bundle(head: &BundleHead, payloads: [&Path; 2], path: &Path) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(IO_BUF, file);
    out.write_all(head.bytes())?;
    for (kind, payload) in PayloadKind::ALL.into_iter().zip(payloads) {
        io::copy(&mut io::repeat(0).take(head.padding_before(kind)), &mut out)?;
        // Hashing again while copying catches a file that changed since
        // it was hashed: the bundle would otherwise fail on every box.
        let mut check = PayloadVerifier::new(head.manifest(), kind);
        copy_file(payload, &format!("writing {kind}"), |bytes| {
            check.handle_bytes(bytes).map_err(image::Error::from)?;
            Ok(out.write_all(bytes)?)
        })
        .with_context(|| format!("{} changed while building", payload.display()))?;
        check.finish().map_err(image::Error::from)?;
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
        .with_context(|| format!("writing {}", path.display()))
}

// --- verify ------------------------------------------------------------------

fn verify(
    pubkeys: &[PathBuf],
    compatible: Option<&str>,
    min_security_version: Option<u64>,
    bundle: &Path,
) -> Result<()> {
    let trusted = pubkeys
        .iter()
        .map(|path| {
            let text =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            PublicKey::parse(&text).with_context(|| path.display().to_string())
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = verify_stream(&trusted, bundle, |manifest| {
        if let Some(device) = compatible {
            manifest.check_compatible(device)?;
        }
        if let Some(installed) = min_security_version {
            manifest.check_security_version(installed)?;
        }
        Ok(())
    })
    .with_context(|| format!("verifying {}", bundle.display()))?;
    say(format_args!(
        "{}: OK: {}",
        bundle.display(),
        summary(&manifest)
    ))
}

/// Streams the file through the reader and the payload stream, as the
/// updater streams a download; `policy` runs once the manifest is verified.
fn verify_stream(
    trusted: &[PublicKey],
    path: &Path,
    policy: impl FnOnce(&Manifest) -> Result<(), image::BundleError>,
) -> Result<Manifest> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BundleReader::new(trusted);
    let mut buf = vec![0; IO_BUF];
    let mut stream = None;
    let mut bar = None;
    let mut policy = Some(policy);
    loop {
        let n = read_some(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        let mut piece = &buf[..n];
        if stream.is_none() {
            let used = reader.handle_bytes(piece).map_err(image::Error::from)?;
            piece = &piece[used..];
            let Some(manifest) = reader.manifest() else {
                continue;
            };
            if let Some(policy) = policy.take() {
                policy(manifest).map_err(image::Error::from)?;
            }
            stream = Some(PayloadStream::new(manifest));
            bar = Some(progress(manifest.file_len(), "verifying".to_owned()));
        }
        let (Some(stream), Some(bar)) = (stream.as_mut(), bar.as_ref()) else {
            continue;
        };
        while !piece.is_empty() {
            let step = stream.handle_bytes(piece).map_err(image::Error::from)?;
            piece = &piece[step.len()..];
        }
        bar.set_position(stream.position());
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(stream) = stream {
        stream.finish().map_err(image::Error::from)?;
    }
    // An unfinished reader reports what is missing.
    Ok(reader.into_manifest().map_err(image::Error::from)?)
}

// --- inspect -----------------------------------------------------------------

fn inspect(path: &Path) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut head = vec![0; HEADER_LEN];
    read_up_to(&mut file, &mut head)?;
    let manifest_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    // Read no more than the format allows, even if the header says more:
    // the parser then reports the bad length.
    let wanted = manifest_len.min(image::bundle::MAX_MANIFEST_LEN) as usize;
    head.resize(HEADER_LEN + wanted, 0);
    let got = read_up_to(&mut file, &mut head[HEADER_LEN..])?;
    head.truncate(HEADER_LEN + got);
    let (header, manifest) = inspect_unverified(&head).map_err(image::Error::from)?;

    let mut lines = vec![
        format!("bundle            {}", path.display()),
        "signature         NOT CHECKED (use `edge-bundle verify`)".to_owned(),
        format!("format version    {}", header.version),
        format!("key id            {}", header.key_id),
        format!("compatible        {}", manifest.compatible()),
        format!("version           {}", manifest.version()),
        format!("security version  {}", manifest.security_version()),
        format!("chunk size        {}", manifest.chunk_size()),
    ];
    for p in manifest.payloads() {
        lines.push(format!(
            "{:<17} offset {}, size {}, chunks {}, sha256 {}",
            p.kind().name(),
            p.offset(),
            p.size(),
            p.chunks().len(),
            hex(p.sha256())
        ));
    }
    lines.push(format!(
        "file length       {} (manifest says {})",
        file_len,
        manifest.file_len()
    ));
    say(format_args!("{}", lines.join("\n")))
}

// --- helpers -----------------------------------------------------------------

fn summary(manifest: &Manifest) -> String {
    format!(
        "version {}, security version {}, compatible {}, key id {}",
        manifest.version(),
        manifest.security_version(),
        manifest.compatible(),
        manifest.key_id()
    )
}

/// Reads `path` in pieces, handing each to `sink`, with a progress bar.
fn copy_file(path: &Path, what: &str, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let bar = progress(len, what.to_owned());
    let mut buf = vec![0; IO_BUF];
    loop {
        let n = read_some(&mut file, &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sink(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// One `read`, retried on interruption.
fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Fills `buf` as far as the file goes; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(file, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A byte progress bar on stderr; indicatif draws nothing when stderr is
/// not a terminal, so scripts and tests see clean output.
fn progress(len: u64, what: String) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>16} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("the template is a constant that parses")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what);
    bar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints the result on stdout.
fn say(text: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}
