//! What an idle TLS connection holds on the heap, server side: N
//! connections complete a handshake and echo one small message, then sit
//! idle; the live heap bytes the server thread allocated for them (rustls
//! state and buffers, the boxed stream) are measured with a counting
//! allocator that only counts the server thread. Prints the figure (run
//! with `--nocapture`) and bounds it. A test binary of its own, because of
//! the global allocator.

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wsrelay::server::transport::Transport;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
thread_local! {
    static COUNT: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNT.with(|c| c.get()) {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if COUNT.with(|c| c.get()) {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNT.with(|c| c.get()) {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 200;

#[test]
fn idle_tls_connection_heap() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("wsrelay-tls-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, keyf) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&keyf, key.key_pair.serialize_pem()).unwrap();
    let (server, _certs) =
        wsrelay::server::tls::server_config(cert.to_str().unwrap(), keyf.to_str().unwrap())
            .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(wsrelay::server::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (measured_tx, measured_rx) = std::sync::mpsc::channel::<()>();
    let clients = std::thread::spawn(move || {
        let mut open = Vec::new();
        for _ in 0..N {
            let sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let conn =
                rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap())
                    .unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            s.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            s.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"hello");
            open.push(s);
        }
        done_tx.send(()).unwrap();
        let _ = measured_rx.recv();
        drop(open);
    });

    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut listener, Token(usize::MAX), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Transport> = Vec::with_capacity(N);
    let mut buf = vec![0u8; 4096];
    COUNT.with(|c| c.set(true));
    let base = LIVE.load(Ordering::Relaxed);
    let mut finished = false;
    while !finished {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                while let Ok((sock, _)) = listener.accept() {
                    let tls = rustls::ServerConnection::new(server.clone()).unwrap();
                    let mut t = Transport::tls(tls, sock);
                    poll.registry()
                        .register(&mut t, Token(conns.len()), Interest::READABLE)
                        .unwrap();
                    conns.push(t);
                }
            }
        }
        for (i, t) in conns.iter_mut().enumerate() {
            loop {
                match t.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = t.write(&buf[..n]);
                    }
                    _ => break,
                }
            }
            let _ = t.push();
            let interest = if t.wants_write() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry().reregister(t, Token(i), interest).unwrap();
        }
        finished = done_rx.try_recv().is_ok();
    }
    let live = LIVE.load(Ordering::Relaxed) - base;
    COUNT.with(|c| c.set(false));
    let per = live as usize / N;
    println!(
        "idle TLS connection, server heap: {per} bytes each ({N} connections, {live} bytes; \
         rustls::ServerConnection itself is {} bytes, boxed)",
        std::mem::size_of::<rustls::ServerConnection>()
    );
    measured_tx.send(()).unwrap();
    clients.join().unwrap();
    drop(buf);
    // Measured 6.3 KiB (rustls 0.23.48, aws-lc-rs): 4 KiB of it is the
    // read buffer rustls' deframer keeps at its minimum size while idle.
    // The target is 2 KiB on top of plain; this bound only catches
    // a regression (see docs/architecture.md, "Memory per idle connection").
    assert!(per < 8 * 1024, "{per} bytes per idle TLS connection");
}
