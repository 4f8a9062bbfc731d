//! The client's socket, as both paths (the redirect lane and hyper) use it.
//!
//! - **Send timeout.** A write the client does not take (it never reads) marks the
//!   connection as waiting on the client. The connection's watcher (`idle`) closes it once
//!   one wait has lasted the send timeout, as nginx's `send_timeout` does. A write that
//!   proceeds touches only a field of its own: the shared counter moves when a wait starts
//!   or ends, not per write.
//! - **Lingering close.** Closing sends FIN, then reads and drops what the client still
//!   sends, until it closes too or [`LINGER`] passes. Closing a socket with unread input
//!   makes the kernel send a reset, which can destroy the last answer before the client
//!   reads it (RFC 9112, 9.6).
//! - A socket dropped while a write waits is reset at once (`SO_LINGER` 0): the client has
//!   not read for the whole timeout, and the kernel would otherwise keep its unsent answers
//!   for minutes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::idle::Activity;

/// How long a close waits for the client to close its side.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// The most a lingering close reads before it gives up on the client.
const LINGER_BYTES: usize = 256 << 10;

/// A connection's socket: see the module's header.
pub(crate) struct ClientSocket {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// A write is waiting on the client (this socket's copy of what `activity` was told).
    waiting: bool,
    /// Once closing: the lingering's deadline and what it has read.
    closing: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl ClientSocket {
    pub(crate) fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self { stream, activity, waiting: false, closing: None }
    }

    /// Records whether the last write had to wait; only a change reaches the shared counter.
    fn wrote<T>(&mut self, result: Poll<T>) -> Poll<T> {
        if result.is_pending() != self.waiting {
            self.waiting = !self.waiting;
            self.activity.write_wait_changed();
        }
        result
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.waiting {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// FIN, then the lingering read (see the module's header). Always ends `Ok` once FIN
    /// is sent: what the client does after that changes nothing for the server.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.closing = Some((Box::pin(tokio::time::sleep(LINGER)), 0));
        }
        let Some((deadline, read)) = this.closing.as_mut() else { return Poll::Ready(Ok(())) };
        let mut scratch = [0u8; 4096];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *read > LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => *read += buf.filled().len(),
                Poll::Ready(_) => return Poll::Ready(Ok(())), // the client closed, or reset
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
