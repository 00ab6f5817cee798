//! ACPI table discovery: validate the RSDP, walk the RSDT or XSDT, find a table by signature.
//!
//! Firmware tables are untrusted input. Every length and checksum is checked before a table is
//! handed out, fields are decoded byte by byte (tables are packed and unaligned), and memory is
//! reached only through [`PhysMemory`], which says which physical ranges may be read.

use core::fmt;

/// How the driver reads physical memory holding firmware tables; the embedder implements it.
///
/// A kernel that identity-maps RAM returns a slice over the physical address; host tests back it
/// with a buffer at a fake base. `None` means the range is not readable (unmapped, or beyond
/// RAM): the walk then stops with [`AcpiError::Unreadable`] rather than touching it.
pub trait PhysMemory {
    /// The `len` bytes at physical address `phys`, or `None` if that range cannot be read.
    fn bytes(&self, phys: u64, len: usize) -> Option<&[u8]>;
}

/// Size of the common header every system description table starts with (ACPI 6.5, 5.2.6).
pub const SDT_HEADER_LEN: usize = 36;

/// Size of the ACPI 1.0 RSDP, covered by its first checksum (ACPI 6.5, 5.2.5.3).
const RSDP_V1_LEN: usize = 20;
/// Size of the ACPI 2.0+ RSDP with the XSDT address and the extended checksum.
const RSDP_V2_LEN: usize = 36;
/// Firmware tables are small; a length field above this is corruption, not a table to map.
const MAX_TABLE_LEN: u32 = 16 << 20;

/// Why discovery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// [`PhysMemory`] refused the range: the address is not readable memory.
    Unreadable { phys: u64, len: usize },
    /// The RSDP does not start with `"RSD PTR "`: the address is not an RSDP.
    BadRsdpSignature { phys: u64 },
    /// The bytes of the ACPI 1.0 part of the RSDP do not sum to zero.
    BadRsdpChecksum { phys: u64 },
    /// An ACPI 2.0+ RSDP gives a length too small to hold the XSDT address.
    BadRsdpLength { phys: u64, length: u32 },
    /// The bytes of an ACPI 2.0+ RSDP (its extended checksum) do not sum to zero.
    BadRsdpExtendedChecksum { phys: u64 },
    /// The RSDP names neither an RSDT nor an XSDT (both addresses are zero).
    NoRootTable,
    /// A table is not the one expected where it was looked for (the RSDT or XSDT).
    BadSignature {
        phys: u64,
        expected: Signature,
        found: Signature,
    },
    /// A table's length field is smaller than its header or implausibly large.
    BadLength {
        phys: u64,
        signature: Signature,
        length: u32,
    },
    /// The bytes of a table do not sum to zero.
    BadChecksum { phys: u64, signature: Signature },
    /// The RSDT/XSDT entry area is not a whole number of 4- or 8-byte entries.
    BadRootEntries {
        phys: u64,
        signature: Signature,
        length: u32,
    },
    /// No table with this signature is listed in the root table.
    NotFound { signature: Signature },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unreadable { phys, len } => {
                write!(f, "ACPI: cannot read {len} bytes at {phys:#x}")
            }
            Self::BadRsdpSignature { phys } => write!(f, "ACPI: no RSDP signature at {phys:#x}"),
            Self::BadRsdpChecksum { phys } => {
                write!(f, "ACPI: RSDP at {phys:#x} has a bad checksum")
            }
            Self::BadRsdpLength { phys, length } => {
                write!(f, "ACPI: RSDP at {phys:#x} has a bad length {length}")
            }
            Self::BadRsdpExtendedChecksum { phys } => {
                write!(f, "ACPI: RSDP at {phys:#x} has a bad extended checksum")
            }
            Self::NoRootTable => write!(f, "ACPI: RSDP names neither an RSDT nor an XSDT"),
            Self::BadSignature {
                phys,
                expected,
                found,
            } => {
                write!(f, "ACPI: expected {expected} at {phys:#x}, found {found}")
            }
            Self::BadLength {
                phys,
                signature,
                length,
            } => {
                write!(
                    f,
                    "ACPI: {signature} at {phys:#x} has a bad length {length}"
                )
            }
            Self::BadChecksum { phys, signature } => {
                write!(f, "ACPI: {signature} at {phys:#x} has a bad checksum")
            }
            Self::BadRootEntries {
                phys,
                signature,
                length,
            } => write!(
                f,
                "ACPI: {signature} at {phys:#x} has length {length}, not a whole number of entries"
            ),
            Self::NotFound { signature } => write!(f, "ACPI: no {signature} table"),
        }
    }
}

impl core::error::Error for AcpiError {}

/// A four-byte table signature such as `DMAR`; displayed as text, with odd bytes escaped.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    pub const RSDT: Self = Self(*b"RSDT");
    pub const XSDT: Self = Self(*b"XSDT");
    pub const DMAR: Self = Self(*b"DMAR");
    pub const IORT: Self = Self(*b"IORT");
    pub const MCFG: Self = Self(*b"MCFG");
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Little-endian field readers over untrusted, packed table bytes: `None` past the end, never a
/// panic or an unaligned access. Shared by the table parsers of the back-ends (DMAR, IORT).
pub mod le {
    pub fn u8_at(b: &[u8], off: usize) -> Option<u8> {
        b.get(off).copied()
    }
    pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
        Some(u16::from_le_bytes(array(b, off)?))
    }
    pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(array(b, off)?))
    }
    pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(array(b, off)?))
    }
    pub fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
        b.get(off..off.checked_add(N)?)?.try_into().ok()
    }
}

/// True if the bytes sum to zero modulo 256, the ACPI checksum rule.
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

/// Which root table the walk uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootTable {
    /// ACPI 1.0 Root System Description Table: 32-bit entries.
    Rsdt(u64),
    /// ACPI 2.0+ Extended System Description Table: 64-bit entries.
    Xsdt(u64),
}

/// The validated Root System Description Pointer (ACPI 6.5, 5.2.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rsdp {
    /// 0 for ACPI 1.0 (RSDT only), 2 or more for ACPI 2.0+ (XSDT available).
    pub revision: u8,
    pub oem_id: [u8; 6],
    /// Physical address of the RSDT; 0 if absent.
    pub rsdt: u32,
    /// Physical address of the XSDT, for revision 2 and later; `None` before, or if zero.
    pub xsdt: Option<u64>,
}

impl Rsdp {
    /// Reads and validates the RSDP at `phys`: signature, checksum, and for revision 2 and
    /// later the length and extended checksum.
    pub fn read(mem: &impl PhysMemory, phys: u64) -> Result<Self, AcpiError> {
        let v1 = read(mem, phys, RSDP_V1_LEN)?;
        if v1.get(..8) != Some(b"RSD PTR ".as_slice()) {
            return Err(AcpiError::BadRsdpSignature { phys });
        }
        if !checksum_ok(v1) {
            return Err(AcpiError::BadRsdpChecksum { phys });
        }
        // `v1` is exactly 20 bytes long, so these reads cannot fall short.
        let revision = le::u8_at(v1, 15).unwrap_or(0);
        let oem_id = le::array(v1, 9).unwrap_or([0; 6]);
        let rsdt = le::u32_at(v1, 16).unwrap_or(0);
        // Revision 1 was never assigned; like other OSes, treat anything below 2 as ACPI 1.0.
        let xsdt = if revision >= 2 {
            let head = read(mem, phys, RSDP_V2_LEN)?;
            let length = le::u32_at(head, 20).unwrap_or(0);
            if (length as usize) < RSDP_V2_LEN || length > 4096 {
                return Err(AcpiError::BadRsdpLength { phys, length });
            }
            let full = read(mem, phys, length as usize)?;
            if !checksum_ok(full) {
                return Err(AcpiError::BadRsdpExtendedChecksum { phys });
            }
            le::u64_at(full, 24).filter(|&a| a != 0)
        } else {
            None
        };
        Ok(Self {
            revision,
            oem_id,
            rsdt,
            xsdt,
        })
    }

    /// The root table to walk: the XSDT when there is one (its entries reach above 4 GiB and
    /// ACPI 2.0+ says to prefer it), else the RSDT.
    pub fn root_table(&self) -> Result<RootTable, AcpiError> {
        match (self.xsdt, self.rsdt) {
            (Some(x), _) => Ok(RootTable::Xsdt(x)),
            (None, 0) => Err(AcpiError::NoRootTable),
            (None, r) => Ok(RootTable::Rsdt(u64::from(r))),
        }
    }
}

/// A validated system description table: its length fits, its checksum holds.
#[derive(Clone, Copy)]
pub struct Table<'m> {
    phys: u64,
    bytes: &'m [u8],
}

impl<'m> Table<'m> {
    /// Reads the table at `phys` and checks its length and checksum.
    pub fn read(mem: &'m impl PhysMemory, phys: u64) -> Result<Self, AcpiError> {
        let header = read(mem, phys, SDT_HEADER_LEN)?;
        let signature = Signature(le::array(header, 0).unwrap_or([0; 4]));
        let length = le::u32_at(header, 4).unwrap_or(0);
        if (length as usize) < SDT_HEADER_LEN || length > MAX_TABLE_LEN {
            return Err(AcpiError::BadLength {
                phys,
                signature,
                length,
            });
        }
        let bytes = read(mem, phys, length as usize)?;
        if !checksum_ok(bytes) {
            return Err(AcpiError::BadChecksum { phys, signature });
        }
        Ok(Self { phys, bytes })
    }

    pub fn phys(&self) -> u64 {
        self.phys
    }

    pub fn signature(&self) -> Signature {
        Signature(le::array(self.bytes, 0).unwrap_or([0; 4]))
    }

    pub fn revision(&self) -> u8 {
        le::u8_at(self.bytes, 8).unwrap_or(0)
    }

    pub fn oem_id(&self) -> [u8; 6] {
        le::array(self.bytes, 10).unwrap_or([0; 6])
    }

    pub fn oem_table_id(&self) -> [u8; 8] {
        le::array(self.bytes, 16).unwrap_or([0; 8])
    }

    /// The whole table, header included, exactly as long as its length field says.
    pub fn bytes(&self) -> &'m [u8] {
        self.bytes
    }

    /// The table after the common header.
    pub fn body(&self) -> &'m [u8] {
        self.bytes.get(SDT_HEADER_LEN..).unwrap_or(&[])
    }
}

impl fmt::Debug for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("signature", &self.signature())
            .field("phys", &format_args!("{:#x}", self.phys))
            .field("length", &self.bytes.len())
            .field("revision", &self.revision())
            .finish()
    }
}

/// The firmware's ACPI tables, reached from a validated RSDP and root table.
pub struct Acpi<'m, M: PhysMemory> {
    mem: &'m M,
    rsdp: Rsdp,
    root: Table<'m>,
    entry_size: usize,
}

impl<'m, M: PhysMemory> Acpi<'m, M> {
    /// Validates the RSDP at `rsdp_phys` and the root table it names (XSDT preferred).
    pub fn new(mem: &'m M, rsdp_phys: u64) -> Result<Self, AcpiError> {
        let rsdp = Rsdp::read(mem, rsdp_phys)?;
        let (phys, expected, entry_size) = match rsdp.root_table()? {
            RootTable::Xsdt(p) => (p, Signature::XSDT, 8),
            RootTable::Rsdt(p) => (p, Signature::RSDT, 4),
        };
        let root = Table::read(mem, phys)?;
        if root.signature() != expected {
            return Err(AcpiError::BadSignature {
                phys,
                expected,
                found: root.signature(),
            });
        }
        if !root.body().len().is_multiple_of(entry_size) {
            return Err(AcpiError::BadRootEntries {
                phys,
                signature: expected,
                length: root.bytes().len() as u32,
            });
        }
        Ok(Self {
            mem,
            rsdp,
            root,
            entry_size,
        })
    }

    pub fn rsdp(&self) -> &Rsdp {
        &self.rsdp
    }

    /// The RSDT or XSDT the walk uses.
    pub fn root(&self) -> Table<'m> {
        self.root
    }

    /// The physical addresses the root table lists, in order.
    pub fn entries(&self) -> impl Iterator<Item = u64> + 'm {
        let size = self.entry_size;
        self.root
            .body()
            .chunks_exact(size)
            .map(move |e| match size {
                8 => le::u64_at(e, 0).unwrap_or(0),
                _ => u64::from(le::u32_at(e, 0).unwrap_or(0)),
            })
    }

    /// Every listed table, each validated; a bad one is an `Err` item, the walk goes on.
    pub fn tables(&self) -> impl Iterator<Item = Result<Table<'m>, AcpiError>> + 'm {
        let mem = self.mem;
        self.entries().map(move |phys| Table::read(mem, phys))
    }

    /// The first table with `signature`. Only tables whose header says `signature` are fully
    /// validated, so a broken unrelated table does not hide the one asked for; a broken table
    /// with the right signature is an error, not skipped.
    pub fn find(&self, signature: Signature) -> Result<Table<'m>, AcpiError> {
        for phys in self.entries() {
            let Some(header) = self.mem.bytes(phys, SDT_HEADER_LEN) else {
                continue;
            };
            if le::array(header, 0) == Some(signature.0) {
                return Table::read(self.mem, phys);
            }
        }
        Err(AcpiError::NotFound { signature })
    }
}

fn read(mem: &impl PhysMemory, phys: u64, len: usize) -> Result<&[u8], AcpiError> {
    // An embedder returning a shorter slice than asked would make later field reads fail
    // silently; treat it as unreadable instead.
    mem.bytes(phys, len)
        .filter(|b| b.len() == len)
        .ok_or(AcpiError::Unreadable { phys, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// Fake physical memory: `data` sits at physical address `base`.
    struct FakeMemory {
        base: u64,
        data: Vec<u8>,
    }

    impl PhysMemory for FakeMemory {
        fn bytes(&self, phys: u64, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(phys.checked_sub(self.base)?).ok()?;
            self.data.get(start..start.checked_add(len)?)
        }
    }

    const BASE: u64 = 0xe_0000;

    impl FakeMemory {
        fn new() -> Self {
            Self {
                base: BASE,
                data: vec![0; 0x2000],
            }
        }
        fn put(&mut self, phys: u64, bytes: &[u8]) {
            let at = (phys - self.base) as usize;
            self.data[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes[at] = sum.wrapping_neg();
    }

    /// An SDT built from the ACPI header layout: signature, length, revision, checksum, OEM
    /// ids, then the body.
    fn sdt(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(signature);
        t.extend_from_slice(&((SDT_HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum, fixed below
        t.extend_from_slice(b"BOCHS ");
        t.extend_from_slice(b"BXPC    ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"BXPC");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"BOCHS ");
        r.push(0); // revision 0: ACPI 1.0
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = rsdp_v1(rsdt);
        r[15] = 2;
        fix_checksum(&mut r, 8);
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        fix_checksum(&mut r, 32);
        r
    }

    const RSDP: u64 = BASE;
    const RSDT: u64 = BASE + 0x100;
    const XSDT: u64 = BASE + 0x200;
    const FACP: u64 = BASE + 0x400;
    const DMAR: u64 = BASE + 0x800;

    /// The layout SeaBIOS gives QEMU's q35: RSDP revision 0, an RSDT listing FACP and DMAR.
    fn seabios_like() -> FakeMemory {
        let mut m = FakeMemory::new();
        m.put(RSDP, &rsdp_v1(RSDT as u32));
        let mut entries = Vec::new();
        for t in [FACP, DMAR] {
            entries.extend_from_slice(&(t as u32).to_le_bytes());
        }
        m.put(RSDT, &sdt(b"RSDT", &entries));
        m.put(FACP, &sdt(b"FACP", &[0; 16]));
        m.put(DMAR, &sdt(b"DMAR", &[38, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        m
    }

    #[test]
    fn revision_0_walks_the_rsdt_and_finds_dmar() {
        let m = seabios_like();
        let acpi = Acpi::new(&m, RSDP).unwrap();
        assert_eq!(acpi.rsdp().revision, 0);
        assert_eq!(acpi.rsdp().xsdt, None);
        assert_eq!(acpi.root().signature(), Signature::RSDT);
        assert_eq!(acpi.entries().collect::<Vec<_>>(), [FACP, DMAR]);
        let dmar = acpi.find(Signature::DMAR).unwrap();
        assert_eq!(dmar.phys(), DMAR);
        assert_eq!(dmar.bytes().len(), SDT_HEADER_LEN + 12);
        assert_eq!(dmar.body().first(), Some(&38));
        assert_eq!(&dmar.oem_id(), b"BOCHS ");
        assert_eq!(acpi.tables().filter(|t| t.is_ok()).count(), 2);
        assert_eq!(
            acpi.find(Signature::IORT).unwrap_err(),
            AcpiError::NotFound {
                signature: Signature::IORT
            }
        );
    }

    #[test]
    fn revision_2_prefers_the_xsdt() {
        let mut m = seabios_like();
        m.put(RSDP, &rsdp_v2(RSDT as u32, XSDT));
        // The XSDT lists only DMAR, the RSDT both: finding FACP proves which one was walked.
        m.put(XSDT, &sdt(b"XSDT", &DMAR.to_le_bytes()));
        let acpi = Acpi::new(&m, RSDP).unwrap();
        assert_eq!(acpi.rsdp().revision, 2);
        assert_eq!(acpi.root().signature(), Signature::XSDT);
        assert_eq!(acpi.entries().collect::<Vec<_>>(), [DMAR]);
        assert!(acpi.find(Signature::DMAR).is_ok());
        assert!(matches!(
            acpi.find(Signature(*b"FACP")),
            Err(AcpiError::NotFound { .. })
        ));
    }

    #[test]
    fn revision_2_without_xsdt_falls_back_to_the_rsdt() {
        let mut m = seabios_like();
        m.put(RSDP, &rsdp_v2(RSDT as u32, 0));
        let acpi = Acpi::new(&m, RSDP).unwrap();
        assert_eq!(acpi.root().signature(), Signature::RSDT);
    }

    #[test]
    fn rsdp_errors_are_typed() {
        let mut m = seabios_like();
        assert_eq!(
            Acpi::new(&m, RSDP + 0x10).err(),
            Some(AcpiError::BadRsdpSignature { phys: RSDP + 0x10 })
        );
        assert_eq!(
            Acpi::new(&m, 0x1000).err(),
            Some(AcpiError::Unreadable {
                phys: 0x1000,
                len: 20
            })
        );
        let mut bad = rsdp_v1(RSDT as u32);
        bad[16] ^= 1;
        m.put(RSDP, &bad);
        assert_eq!(
            Acpi::new(&m, RSDP).err(),
            Some(AcpiError::BadRsdpChecksum { phys: RSDP })
        );

        let mut bad = rsdp_v2(RSDT as u32, XSDT);
        bad[24] ^= 1;
        m.put(RSDP, &bad);
        assert_eq!(
            Acpi::new(&m, RSDP).err(),
            Some(AcpiError::BadRsdpExtendedChecksum { phys: RSDP })
        );

        let mut bad = rsdp_v2(RSDT as u32, XSDT);
        bad[20] = 8;
        fix_checksum(&mut bad, 32);
        m.put(RSDP, &bad);
        assert_eq!(
            Acpi::new(&m, RSDP).err(),
            Some(AcpiError::BadRsdpLength {
                phys: RSDP,
                length: 8
            })
        );

        m.put(RSDP, &rsdp_v1(0));
        assert_eq!(Acpi::new(&m, RSDP).err(), Some(AcpiError::NoRootTable));
    }

    #[test]
    fn root_table_errors_are_typed() {
        let mut m = seabios_like();
        // The RSDP points at FACP instead of an RSDT.
        m.put(RSDP, &rsdp_v1(FACP as u32));
        assert!(matches!(
            Acpi::new(&m, RSDP),
            Err(AcpiError::BadSignature {
                expected: Signature::RSDT,
                ..
            })
        ));
        // An RSDT whose entry area is not a multiple of 4.
        m.put(RSDP, &rsdp_v1(RSDT as u32));
        m.put(RSDT, &sdt(b"RSDT", &[0; 6]));
        assert!(matches!(
            Acpi::new(&m, RSDP),
            Err(AcpiError::BadRootEntries { .. })
        ));
        // A corrupted RSDT.
        let mut rsdt = sdt(b"RSDT", &(FACP as u32).to_le_bytes());
        rsdt[36] ^= 0x40;
        m.put(RSDT, &rsdt);
        assert!(matches!(
            Acpi::new(&m, RSDP),
            Err(AcpiError::BadChecksum { .. })
        ));
    }

    #[test]
    fn a_broken_table_is_reported_not_returned() {
        let mut m = seabios_like();
        let mut dmar = sdt(b"DMAR", &[38, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        dmar[40] ^= 0xff;
        m.put(DMAR, &dmar);
        let acpi = Acpi::new(&m, RSDP).unwrap();
        assert_eq!(
            acpi.find(Signature::DMAR).unwrap_err(),
            AcpiError::BadChecksum {
                phys: DMAR,
                signature: Signature::DMAR
            }
        );
        // A length field running off the end of memory.
        let mut dmar = sdt(b"DMAR", &[0; 12]);
        dmar[4..8].copy_from_slice(&0x10000u32.to_le_bytes());
        m.put(DMAR, &dmar);
        let acpi = Acpi::new(&m, RSDP).unwrap();
        assert!(matches!(
            acpi.find(Signature::DMAR),
            Err(AcpiError::Unreadable { .. })
        ));
        dmar[4..8].copy_from_slice(&10u32.to_le_bytes());
        m.put(DMAR, &dmar);
        let acpi = Acpi::new(&m, RSDP).unwrap();
        assert!(matches!(
            acpi.find(Signature::DMAR),
            Err(AcpiError::BadLength { length: 10, .. })
        ));
    }

    #[test]
    fn errors_display_signatures_as_text() {
        let e = AcpiError::BadChecksum {
            phys: 0x1000,
            signature: Signature(*b"DM\x00R"),
        };
        assert_eq!(
            std::format!("{e}"),
            "ACPI: DM\\x00R at 0x1000 has a bad checksum"
        );
    }

    proptest! {
        /// Whatever lies in memory, the walk never panics or reads outside `PhysMemory`: a valid
        /// RSDP and RSDT point at random offsets of random memory, where random headers (with
        /// random lengths, some running past the end) name known signatures.
        #[test]
        fn random_memory_never_panics(
            mut data in proptest::collection::vec(any::<u8>(), 0x900..0xa00),
            targets in proptest::collection::vec((0x200u64..0xa00, 0usize..3, any::<u16>()), 0..6),
            fix in any::<bool>(),
        ) {
            let sigs = [b"DMAR", b"FACP", b"XSDT"];
            let mut entries = Vec::new();
            for &(off, sig, len) in &targets {
                entries.extend_from_slice(&((BASE + off) as u32).to_le_bytes());
                let at = off as usize;
                if at + 8 <= data.len() {
                    data[at..at + 4].copy_from_slice(sigs[sig]);
                    data[at + 4..at + 8].copy_from_slice(&u32::from(len).to_le_bytes());
                    let end = (at + usize::from(len)).min(data.len());
                    if fix && end > at + 9 {
                        fix_checksum(&mut data[at..end], 9);
                    }
                }
            }
            let rsdt = sdt(b"RSDT", &entries);
            data[..20].copy_from_slice(&rsdp_v1(RSDT as u32));
            data[0x100..0x100 + rsdt.len()].copy_from_slice(&rsdt);
            let m = FakeMemory { base: BASE, data };
            let acpi = Acpi::new(&m, RSDP).unwrap();
            for t in acpi.tables().flatten() {
                prop_assert!(t.bytes().len() >= SDT_HEADER_LEN);
                prop_assert!(checksum_ok(t.bytes()));
            }
            match acpi.find(Signature::DMAR) {
                Ok(t) => prop_assert_eq!(t.signature(), Signature::DMAR),
                Err(e) => {
                    let text = std::format!("{e}");
                    prop_assert!(!text.is_empty());
                }
            }
        }

        /// Flipping bytes of valid tables gives a valid walk or a typed error, never a panic.
        #[test]
        fn corrupted_tables_never_panic(
            flips in proptest::collection::vec((0usize..0x900, any::<u8>()), 1..8),
            fix in any::<bool>(),
        ) {
            let mut m = seabios_like();
            for (at, x) in flips {
                m.data[at] ^= x;
            }
            if fix {
                // Repair the RSDT checksum so corruption of its entries reaches the walk.
                let len = (u32::from_le_bytes(m.data[0x104..0x108].try_into().unwrap()) as usize)
                    .clamp(SDT_HEADER_LEN, 0x100);
                fix_checksum(&mut m.data[0x100..0x100 + len], 9);
            }
            if let Ok(acpi) = Acpi::new(&m, RSDP) {
                for t in acpi.tables().flatten() {
                    prop_assert!(checksum_ok(t.bytes()));
                }
                if let Ok(t) = acpi.find(Signature::DMAR) {
                    prop_assert_eq!(t.signature(), Signature::DMAR);
                }
            }
        }
    }
}
