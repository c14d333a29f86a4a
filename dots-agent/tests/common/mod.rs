//! Shared by the BPF tests: a datapath loaded into its own bpffs pin directory (removed on
//! drop, even when the test fails) and a way to run frames through it. `signal` holds the
//! signal-channel tests' fixtures.
#![allow(dead_code)]

pub mod server_process;
pub mod signal;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::programs::{TestRun, TestRunOptions};
use dots_agent::datapath::{LoadOptions, MitigationCounters, Mitigator, XdpDatapath};

pub const DROP: u32 = 1;
pub const PASS: u32 = 2;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique pin root for one test; removed on drop.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PinRoot(PathBuf::from(format!(
            "/sys/fs/bpf/dots-test-{tag}-{}-{n}",
            std::process::id()
        )))
    }
    pub fn options(&self) -> LoadOptions {
        let mut o = LoadOptions::new(&self.0);
        // Keep the preallocated source table small: tests track a handful of sources.
        o.max_entries.push(("SRC_RATE", 4096));
        o
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Lab {
    pub dp: XdpDatapath,
    pub root: PinRoot,
}

impl Lab {
    pub fn new() -> Lab {
        let root = PinRoot::new("pkt");
        let dp = XdpDatapath::load(&root.options())
            .unwrap_or_else(|e| panic!("loading the datapath: {e:#}"));
        Lab { dp, root }
    }

    /// Runs one frame through the program; returns the XDP action.
    pub fn run(&self, frame: &[u8]) -> u32 {
        let prog = self.dp.program().expect("loaded");
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    pub fn counters(&self, id: u64) -> MitigationCounters {
        self.dp
            .counters(id)
            .expect("reading counters")
            .expect("installed")
    }
}
