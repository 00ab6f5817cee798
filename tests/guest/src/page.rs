//! Pages of guest RAM for DMA, tables and queues. With the MMU off every data access is Device
//! memory, so pages are only touched with volatile accesses (no memcpy/memset, which may use
//! instructions Device memory refuses), and a page's address is its guest-physical address.

/// One 4 KiB page (a zeroed static in .bss).
#[repr(C, align(4096))]
pub struct Page([u8; 4096]);

impl Page {
    pub const ZERO: Page = Page([0; 4096]);
}

/// The guest-physical address of `p`.
pub fn ipa(p: *mut Page) -> u64 {
    p as u64
}

/// Byte `i` (below 4096) of `p`, as DMA left it.
pub fn byte(p: *mut Page, i: usize) -> u8 {
    assert!(i < 4096);
    // SAFETY: inside the page; volatile, DMA writes behind the compiler's back.
    unsafe { p.cast::<u8>().add(i).read_volatile() }
}

pub fn set_byte(p: *mut Page, i: usize, v: u8) {
    assert!(i < 4096);
    // SAFETY: as in `byte`.
    unsafe { p.cast::<u8>().add(i).write_volatile(v) }
}

/// The 64-bit word `i` (below 512) of `p`.
pub fn word(p: *mut Page, i: usize) -> u64 {
    assert!(i < 512);
    // SAFETY: inside the page, 8-aligned; volatile, the hypervisor or the device writes it.
    unsafe { p.cast::<u64>().add(i).read_volatile() }
}

/// Writes `words` from word `i` of `p` on.
pub fn set_words(p: *mut Page, i: usize, words: &[u64]) {
    assert!(i + words.len() <= 512);
    for (k, w) in words.iter().enumerate() {
        // SAFETY: inside the page (checked), 8-aligned.
        unsafe { p.cast::<u64>().add(i + k).write_volatile(*w) };
    }
}
