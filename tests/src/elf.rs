//! What an ELF file says about how it will be loaded: architecture, whether it
//! asks for a program interpreter or shared libraries, and whether it still
//! carries a symbol table.

use object::elf::{FileHeader64, DT_NEEDED, PT_INTERP, SHT_SYMTAB};
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

pub use object::elf::{EM_AARCH64, EM_X86_64};

/// Loading-relevant facts about a 64-bit ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// `e_machine`, e.g. [`EM_AARCH64`].
    pub machine: u16,
    /// A `PT_INTERP` segment: the kernel hands the file to a dynamic loader.
    pub has_interpreter: bool,
    /// `DT_NEEDED` entries: shared libraries the loader must find.
    pub needed_libraries: usize,
    /// A `SHT_SYMTAB` section: the file was not stripped.
    pub has_symtab: bool,
}

impl ElfFacts {
    /// Parses the file header, program headers, dynamic segment and section
    /// headers of a 64-bit ELF image.
    pub fn parse(data: &[u8]) -> Result<Self, crate::Error> {
        let header = FileHeader64::<Endianness>::parse(data)?;
        let endian = header.endian()?;
        let segments = header.program_headers(endian, data)?;

        let has_interpreter = segments.iter().any(|s| s.p_type(endian) == PT_INTERP);

        // A static-pie binary keeps a dynamic segment for its own
        // relocations; what makes it static is that it names no libraries.
        let mut needed_libraries = 0;
        for segment in segments {
            if let Some(entries) = segment.dynamic(endian, data)? {
                needed_libraries += entries
                    .iter()
                    .filter(|d| d.tag32(endian) == Some(DT_NEEDED))
                    .count();
            }
        }

        let sections = header.sections(endian, data)?;
        let has_symtab = sections.iter().any(|s| s.sh_type(endian) == SHT_SYMTAB);

        Ok(Self {
            machine: header.e_machine(endian),
            has_interpreter,
            needed_libraries,
            has_symtab,
        })
    }

    /// Runs without a loader or shared libraries.
    pub fn is_static(&self) -> bool {
        !self.has_interpreter && self.needed_libraries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is a dynamically linked, unstripped host
    /// executable: the opposite of the box's binary on every count.
    #[test]
    fn host_test_binary_is_dynamic_and_unstripped() {
        let exe = std::env::current_exe().expect("path of the running test binary");
        let data = std::fs::read(exe).expect("read the running test binary");
        let facts = ElfFacts::parse(&data).expect("parse the test binary");

        if cfg!(target_arch = "x86_64") {
            assert_eq!(facts.machine, EM_X86_64);
        }
        assert!(facts.has_interpreter);
        assert!(facts.needed_libraries > 0);
        assert!(!facts.is_static());
        assert!(facts.has_symtab);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ElfFacts::parse(b"").is_err());
        assert!(ElfFacts::parse(b"\x7fELF\x02\x01\x01").is_err());
        assert!(ElfFacts::parse(&[0u8; 128]).is_err());
    }
}
