//! OpenSSL DTLS over an in-memory datagram transport, shared by the server and the client:
//! the caller moves datagrams between a UDP socket and the queues.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use openssl::ssl::SslStream;

/// One DTLS session's view of the socket: each read yields one received datagram, each
/// write is one datagram to send.
#[derive(Default)]
pub struct Datagrams {
    pub inbox: VecDeque<Vec<u8>>,
    pub outbox: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Retransmits the last flight if its timer ran out (DTLSv1_handle_timeout).
pub fn handle_timeout(s: &mut SslStream<Datagrams>) {
    // DTLSv1_handle_timeout is a macro over SSL_ctrl(DTLS_CTRL_HANDLE_TIMEOUT = 74).
    // SAFETY: a valid SSL pointer and a control command taking no argument.
    unsafe {
        openssl_sys::SSL_ctrl(
            foreign_types::ForeignTypeRef::as_ptr(s.ssl()),
            74,
            0,
            std::ptr::null_mut(),
        );
    }
}
