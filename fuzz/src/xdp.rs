//! Runs the XDP parser on a frame that ends where an unreadable page begins: a read past
//! `data_end` that the bounds checks missed faults (libFuzzer reports the crash) instead of
//! reading the allocator's next bytes. (No AddressSanitizer runtime ships with the Rust
//! toolchains on these machines, hence the guard page.)

use aya_ebpf::programs::XdpContext;

use crate::xdp_parse::{self, Packet, ParseError, L3};

const PAGE: usize = 4096;
/// Frames up to this size are placed before the guard page (a jumbo frame fits).
pub const MAX_FRAME: usize = 4 * PAGE - 64;

/// Readable pages followed by one PROT_NONE page, mapped once per process.
pub struct Guarded {
    base: *mut u8,
    readable: usize,
}

impl Guarded {
    pub fn new() -> Guarded {
        let readable = MAX_FRAME.div_ceil(PAGE) * PAGE;
        // SAFETY: an anonymous private mapping; the guard page is protected before use.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                readable + PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(base != libc::MAP_FAILED, "mmap failed");
            let base = base as *mut u8;
            let rc = libc::mprotect(base.add(readable) as *mut _, PAGE, libc::PROT_NONE);
            assert_eq!(rc, 0, "mprotect failed");
            Guarded { base, readable }
        }
    }

    /// Copies `frame` so that its last byte is the last readable one; returns the context.
    pub fn place(&mut self, frame: &[u8]) -> XdpContext {
        assert!(frame.len() <= MAX_FRAME);
        // SAFETY: the copy lies within the readable pages.
        unsafe {
            let end = self.base.add(self.readable);
            let start = end.sub(frame.len());
            std::ptr::copy_nonoverlapping(frame.as_ptr(), start, frame.len());
            XdpContext::new(start, end)
        }
    }
}

impl Default for Guarded {
    fn default() -> Self {
        Self::new()
    }
}

/// What the program learns about a frame, in its own order: where IP starts, the fast
/// path's view of the destination, then the full parse (only for usable IP headers).
#[derive(Clone, Copy)]
pub struct Parsed {
    pub l3: Option<Result<L3, ()>>,
    pub fast_ok: bool,
    pub fast_v4: Option<u32>,
    pub fast_v6_top48: Option<u64>,
    pub packet: Option<Packet>,
}

/// `locate`, the fast-path destination read, then `parse`, as `xdp-filter/src/main.rs`
/// calls them.
pub fn run(ctx: &XdpContext) -> Parsed {
    let mut out = Parsed {
        l3: None,
        fast_ok: false,
        fast_v4: None,
        fast_v6_top48: None,
        packet: None,
    };
    let l3 = match xdp_parse::locate(ctx) {
        Ok(l3) => l3,
        Err(ParseError::NotIp) => return out,
        Err(ParseError::Invalid) => {
            out.l3 = Some(Err(()));
            return out;
        }
    };
    out.l3 = Some(Ok(l3));
    match l3 {
        L3::V4(off) => match xdp_parse::ipv4_destination(ctx, off) {
            Ok(d) => out.fast_v4 = Some(d),
            Err(_) => return out,
        },
        L3::V6(off) => match xdp_parse::ipv6_destination_top48(ctx, off) {
            Ok(d) => out.fast_v6_top48 = Some(d),
            Err(_) => return out,
        },
    }
    out.fast_ok = true;
    // SAFETY: Packet is plain data; parse clears every field first.
    let mut p: Packet = unsafe { std::mem::zeroed() };
    xdp_parse::parse(ctx, l3, &mut p);
    out.packet = Some(p);
    out
}
