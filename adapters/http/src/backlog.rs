//! The listening socket's queue: empty before the server can serve, and empty when it closes.
//!
//! A socket bound by this process (rather than inherited) starts listening only when the server
//! starts, so a client that comes while the service starts, or fails to start, is refused at
//! once instead of waiting in the queue until the process exits.
//!
//! The kernel completes TCP handshakes on its own and queues the connections until the server
//! accepts them. Closing the socket resets every connection still queued, and its client, which
//! believes it is connected, may already have sent its request. Taking what is queued and then
//! closing leaves a window in which a new handshake completes; under load, some client falls
//! into it. So the stop first turns new connection attempts away: a socket filter drops every
//! SYN that is not part of a handshake already answered, so the kernel neither answers nor
//! queues it. Its client sends it again a second later and finds the port closed (refused) or
//! a successor listening. Handshakes already answered still complete, and the server keeps
//! accepting for [`HANDSHAKE_GRACE`] before it closes the socket.

use std::time::Duration;

/// Pending connections the kernel queues on a socket the server starts listening on.
const BACKLOG: i32 = 1024;

/// Starts listening on `listener` unless it already does (an inherited or socket-activated
/// socket keeps the queue length it was given).
pub(crate) fn listen(listener: &std::net::TcpListener) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if socket.is_listener()? {
        return Ok(());
    }
    // Elsewhere, listening again only sets the queue length.
    socket.listen(BACKLOG)
}

/// How long a stopping server keeps accepting after it turned new connections away: the round
/// trip in which a handshake the kernel answered just before can still complete.
pub(crate) const HANDSHAKE_GRACE: Duration = Duration::from_millis(100);

/// Makes the kernel ignore new connection attempts on `listener` from now on; handshakes already
/// answered still complete and are queued. Returns false where this is not supported (outside
/// Linux): the caller then closes after the same grace, which only narrows the window.
///
/// The filter belongs to the socket, not to this descriptor: never call it on a socket a
/// successor accepts on.
pub(crate) fn turn_away_new_connections(listener: &tokio::net::TcpListener) -> std::io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        socket2::SockRef::from(listener).attach_filter(&syn_filter())?;
        Ok(true)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = listener;
        Ok(false)
    }
}

/// A classic BPF program run on each packet that reaches the listening socket, with the TCP
/// header at offset 0: drop it (keep 0 bytes) when, of SYN and ACK, only SYN is set (a new
/// connection attempt); keep all of it otherwise (the ACK that completes a handshake).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn syn_filter() -> [socket2::SockFilter; 5] {
    use socket2::SockFilter;
    // Instruction classes and modes of <linux/bpf_common.h>.
    const LD_BYTE_ABSOLUTE: u16 = 0x10 | 0x20; // BPF_LD (0) | BPF_B | BPF_ABS
    const AND_CONSTANT: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
    const JUMP_IF_EQUAL: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN_CONSTANT: u16 = 0x06; // BPF_RET | BPF_K
    const FLAGS_OFFSET: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    [
        SockFilter::new(LD_BYTE_ABSOLUTE, 0, 0, FLAGS_OFFSET),
        SockFilter::new(AND_CONSTANT, 0, 0, SYN | ACK),
        // Equal: the next instruction (drop); else skip it (keep).
        SockFilter::new(JUMP_IF_EQUAL, 0, 1, SYN),
        SockFilter::new(RETURN_CONSTANT, 0, 0, 0),
        SockFilter::new(RETURN_CONSTANT, 0, 0, u32::MAX),
    ]
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_listener_that_turned_new_connections_away_still_serves_those_it_queued() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let queued = tokio::net::TcpStream::connect(address).await.unwrap();
        assert!(turn_away_new_connections(&listener).unwrap());
        // Queued before: still there to accept.
        let (accepted, _) = listener.accept().await.unwrap();
        drop((accepted, queued));
        // After: the kernel does not answer, so the attempt is still waiting (its SYN is sent
        // again after a second) when the listener closes, and is then refused.
        let late = tokio::spawn(tokio::net::TcpStream::connect(address));
        let accept = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accept.is_err(), "a connection made after the filter was accepted");
        drop(listener);
        let refused = tokio::time::timeout(Duration::from_secs(5), late).await.unwrap().unwrap();
        assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
