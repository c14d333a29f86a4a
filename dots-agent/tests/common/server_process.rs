//! The `dots-agent server` binary run by a test: its stderr collected as it arrives (the
//! test reads the log while the server runs), killed on drop.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct ServerProcess {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Spawns `cmd` with its stderr piped into the log.
    pub fn spawn(cmd: &mut Command) -> ServerProcess {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        ServerProcess { child, log }
    }

    /// What the server has written so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (every 100 ms, up to 10 s) until the log has a line holding all of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        for _ in 0..100 {
            if self
                .log()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
