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

extern "C" {
    // Not wrapped by the openssl crate; declared as in <openssl/ssl.h> and <openssl/bio.h>
    // (BIO_ADDR is opaque here).
    fn DTLSv1_listen(s: *mut openssl_sys::SSL, client: *mut std::ffi::c_void) -> std::ffi::c_int;
    fn BIO_ADDR_new() -> *mut std::ffi::c_void;
    fn BIO_ADDR_free(a: *mut std::ffi::c_void);
}

/// OpenSSL's stateless cookie exchange (`DTLSv1_listen`) over what is in `s`'s inbox: a
/// ClientHello without a valid cookie draws a HelloVerifyRequest (in the outbox) and
/// leaves nothing behind; true once a hello carries a valid cookie, which `s` then keeps
/// for `accept` to continue the handshake from. `s` must be a server-side stream whose
/// context has cookie callbacks.
pub fn listen(s: &mut SslStream<Datagrams>) -> Result<bool, openssl::error::ErrorStack> {
    let ssl = foreign_types::ForeignTypeRef::as_ptr(s.ssl());
    // SAFETY: a valid SSL pointer whose BIO is `s`'s (alive for the call), and a BIO_ADDR
    // we allocate and free around it.
    let r = unsafe {
        let addr = BIO_ADDR_new();
        if addr.is_null() {
            return Err(openssl::error::ErrorStack::get());
        }
        let r = DTLSv1_listen(ssl, addr);
        BIO_ADDR_free(addr);
        r
    };
    // A junk datagram leaves errors on this thread's queue; another peer's next call on the
    // thread must not find them, so the queue is emptied either way.
    let errors = openssl::error::ErrorStack::get();
    s.get_mut().inbox.clear();
    if r < 0 {
        return Err(errors);
    }
    Ok(r == 1)
}
