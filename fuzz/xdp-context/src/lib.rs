//! What xdp-filter/src/parse.rs needs of aya-ebpf, in user space: a frame's start and end
//! addresses. The fuzz harness places the frame so that `data_end` is the first byte of an
//! unreadable page, so a read past the bounds check faults instead of passing unnoticed.

pub mod programs {
    pub struct XdpContext {
        data: usize,
        data_end: usize,
    }

    impl XdpContext {
        /// # Safety
        /// `data..data_end` must be readable for the context's lifetime.
        pub unsafe fn new(data: *const u8, data_end: *const u8) -> Self {
            XdpContext {
                data: data as usize,
                data_end: data_end as usize,
            }
        }

        pub fn data(&self) -> usize {
            self.data
        }

        pub fn data_end(&self) -> usize {
            self.data_end
        }
    }
}
