//! The crate's one error type and its two families for bad input.

use crate::bundle::PayloadKind;
use crate::keys::KeyId;

/// Everything that can go wrong in this crate.
///
/// Bytes that come from the network or from the disk and turn out to be
/// corrupt or hostile are reported through [`BundleError`] and
/// [`BootStateError`]; both are `Clone + Eq` so a state machine can repeat a
/// failure to every later call and tests can compare outcomes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bundle is corrupt, hostile, or may not be installed on this box.
    #[error("bundle rejected: {0}")]
    Bundle(#[from] BundleError),
    /// A boot state block is corrupt or cannot be encoded.
    #[error("boot state: {0}")]
    BootState(#[from] BootStateError),
    /// A key file does not hold a key in the documented format.
    #[error("invalid key file: {0}")]
    KeyFile(&'static str),
    /// The crypto library failed to generate a key.
    #[error("key generation failed")]
    KeyGeneration,
    /// The inputs given to the bundle writer cannot make a valid bundle.
    #[error("cannot build a bundle: {0}")]
    Build(String),
}

/// A bundle rejected because of its bytes, or because of what it says.
///
/// Everything except the last two variants means the bytes are corrupt or
/// were made by someone who does not hold a trusted key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The file does not start with the bundle magic.
    #[error("bad magic: not an edge update bundle")]
    BadMagic,
    /// The header names a format version this code does not read.
    #[error("unsupported bundle format version {0}")]
    UnsupportedVersion(u32),
    /// The header announces a manifest larger than the limit, or an empty one.
    #[error("manifest length {len} is outside 1..={max} bytes")]
    ManifestLength {
        /// Length from the header.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The manifest was signed by a key the box does not trust.
    #[error("signed by unknown key {0}")]
    UnknownKey(KeyId),
    /// The signature does not verify over the manifest bytes.
    #[error("bad signature")]
    BadSignature,
    /// The signed manifest is not the JSON document the format describes.
    #[error("malformed manifest: {0}")]
    MalformedManifest(String),
    /// The signed manifest parses but breaks a rule of the format.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The bundle ended before the bytes its manifest announces.
    #[error("truncated: {missing} more bytes expected")]
    Truncated {
        /// Bytes still expected.
        missing: u64,
    },
    /// Bytes follow the end of the last payload.
    #[error("trailing bytes after the last payload")]
    TrailingBytes,
    /// Padding between the manifest and the payloads holds a non-zero byte.
    #[error("non-zero padding byte at file offset {offset}")]
    BadPadding {
        /// Offset in the bundle file.
        offset: u64,
    },
    /// A chunk of a payload does not have the SHA-256 the manifest lists.
    #[error("chunk {index} of payload {payload} does not match the manifest")]
    ChunkMismatch {
        /// The payload.
        payload: PayloadKind,
        /// Zero-based chunk index.
        index: u64,
    },
    /// A whole payload does not have the SHA-256 the manifest lists.
    #[error("payload {payload} does not match its whole-payload digest")]
    PayloadMismatch {
        /// The payload.
        payload: PayloadKind,
    },
    /// More or fewer payload bytes were fed than the manifest announces.
    #[error("payload {payload} has {fed} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The payload.
        payload: PayloadKind,
        /// Size from the manifest.
        expected: u64,
        /// Bytes fed so far.
        fed: u64,
    },
    /// The bundle is built for another kind of box.
    #[error("bundle is for {bundle:?}, this box is {device:?}")]
    IncompatibleTarget {
        /// Compatibility string of the bundle.
        bundle: String,
        /// Compatibility string of the box.
        device: String,
    },
    /// The bundle's security version is below the one already installed.
    #[error("security version {bundle} is below the installed {installed}")]
    SecurityVersionTooLow {
        /// Security version of the bundle.
        bundle: u64,
        /// Lowest security version the box accepts.
        installed: u64,
    },
}

/// A boot state block that cannot be read, or variables that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootStateError {
    /// The bytes given are not one whole block (or the area is too short to hold the copy).
    #[error("expected {expected} bytes, got {got}")]
    WrongLength {
        /// Length required.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The stored CRC-32 does not match the block.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the first four bytes.
        stored: u32,
        /// CRC of the rest of the block.
        computed: u32,
    },
    /// The variables run to the end of the block without the closing empty entry.
    #[error("variables are not terminated by an empty entry")]
    Unterminated,
    /// An entry has no `=`, an empty name, or bytes that are not UTF-8.
    #[error("malformed variable entry at byte {offset}")]
    MalformedEntry {
        /// Offset of the entry in the block.
        offset: usize,
    },
    /// A variable appears twice.
    #[error("variable {0} appears twice")]
    DuplicateVariable(String),
    /// One of the boot chooser's variables is missing.
    #[error("variable {0} is missing")]
    MissingVariable(&'static str),
    /// One of the boot chooser's variables has a value outside its range.
    #[error("variable {name} has invalid value {value:?}")]
    InvalidValue {
        /// Variable name.
        name: &'static str,
        /// Value found (cut to 32 bytes).
        value: String,
    },
    /// A variable name or value cannot be written into a block.
    #[error("variable {0:?} cannot be encoded: names need no '=' and neither may hold NUL")]
    Unencodable(String),
    /// The variables do not fit in one block.
    #[error("variables need {needed} bytes, a block holds {capacity}")]
    TooLarge {
        /// Bytes needed, closing empty entry included.
        needed: usize,
        /// Bytes available after the CRC.
        capacity: usize,
    },
}

/// A partition table or file system header on the medium that cannot be read
/// or grown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// Fewer bytes than the structure needs.
    #[error("truncated")]
    Truncated,
    /// The header does not start with `EFI PART`.
    #[error("no GPT signature")]
    Signature,
    /// A header revision other than 1.0.
    #[error("unsupported GPT revision {0:#010x}")]
    Revision(u32),
    /// A header size below 92 bytes or beyond its sector.
    #[error("GPT header size {0} is out of range")]
    HeaderSize(usize),
    /// The header CRC does not match.
    #[error("GPT header CRC mismatch")]
    HeaderCrc,
    /// The entry array CRC does not match.
    #[error("GPT entry array CRC mismatch")]
    EntriesCrc,
    /// An entry size that is not a power of two of at least 128 bytes.
    #[error("GPT entry size {0} is invalid")]
    EntrySize(usize),
    /// An entry array that is empty or over a MiB.
    #[error("GPT entry array length is out of range")]
    EntriesLength,
    /// Usable sectors or the medium size do not add up.
    #[error("GPT geometry is inconsistent with the medium")]
    Geometry,
    /// No partition has this name.
    #[error("no partition named {0:?}")]
    NoPartition(String),
    /// The partition is not the last on the medium, so it cannot grow.
    #[error("partition {0:?} is not the last one")]
    NotLast(String),
    /// The medium is smaller than the table says it was.
    #[error("the medium is smaller than the partition table")]
    Shrunk,
    /// Not an ext2/3/4 superblock.
    #[error("no ext4 superblock")]
    NotExt4,
}
