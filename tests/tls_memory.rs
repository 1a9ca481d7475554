//! What an idle TLS connection holds on the heap, server side: N
//! connections complete a handshake and echo one small message, then sit
//! idle. Two figures: the Rust heap the server thread allocated for them
//! (rustls' state, the boxed stream), from a counting allocator that only
//! counts the server thread; and everything malloc holds for them, which
//! also sees aws-lc's allocations in C (the AEAD key contexts), from
//! glibc's `mallinfo2`. For the second the clients run in a child process
//! (this test binary again, running the ignored `tls_clients` helper), so
//! only the server's allocations are in this process. Prints the figures
//! (run with `--nocapture`) and bounds them. A test binary of its own,
//! because of the global allocator.

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, Read, Write};
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

/// Bytes malloc has handed out and not had back, all threads and arenas.
fn malloc_in_use() -> isize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.uordblks as isize
}

/// The clients, in the child process: N TLS connections to
/// `WSRELAY_TLS_MEM_ADDR` trusting the certificate in
/// `WSRELAY_TLS_MEM_CA`, each echoing "hello" once; then a marker line on
/// stdout, and the connections stay open until stdin closes.
#[test]
#[ignore = "helper: run by idle_tls_connection_heap in a child process"]
fn tls_clients() {
    let (Ok(addr), Ok(ca)) = (
        std::env::var("WSRELAY_TLS_MEM_ADDR"),
        std::env::var("WSRELAY_TLS_MEM_CA"),
    ) else {
        return;
    };
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(wsrelay::server::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut open = Vec::new();
    for _ in 0..N {
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn =
            rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        s.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        open.push(s);
    }
    println!("\nTLS-CLIENTS-READY");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(open);
}

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

    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tls_clients", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("WSRELAY_TLS_MEM_ADDR", addr.to_string())
        .env("WSRELAY_TLS_MEM_CA", &cert)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.trim().ends_with("TLS-CLIENTS-READY") {
                let _ = done_tx.send(());
            }
        }
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
    let malloc_base = malloc_in_use();
    let mut finished = false;
    while !finished {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                while let Ok((sock, _)) = listener.accept() {
                    let tls =
                        rustls::server::UnbufferedServerConnection::new(server.clone()).unwrap();
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
        assert!(
            child.try_wait().unwrap().is_none(),
            "the client process ended early"
        );
    }
    // The worker thread's TLS scratch buffers are shared by all its
    // connections: not part of the per-connection figure.
    let scratch = wsrelay::server::transport::scratch_bytes();
    let buffered: usize = conns.iter().map(|t| t.buffered_bytes()).sum();
    let live = LIVE.load(Ordering::Relaxed) - base - scratch as isize;
    let malloc = malloc_in_use() - malloc_base - scratch as isize;
    COUNT.with(|c| c.set(false));
    let per = live as usize / N;
    let per_malloc = malloc.max(0) as usize / N;
    println!(
        "idle TLS connection, server side: {per} bytes of Rust heap, {per_malloc} bytes of \
         malloc in all (aws-lc included) each ({N} connections; \
         rustls::server::UnbufferedServerConnection is {} bytes, boxed; buffers held: \
         {buffered} bytes; plus {scratch} bytes of scratch buffers per worker)",
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>()
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "the client process failed");
    watcher.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    drop(buf);
    assert_eq!(buffered, 0, "idle connections hold no buffer");
    // Measured (rustls 0.23.48 unbuffered, aws-lc-rs, TLS 1.3 with
    // AES-256-GCM): 2,361 bytes of Rust heap, 3,973 bytes of malloc in all
    // (aws-lc's two AEAD contexts and malloc's per-chunk overhead on top).
    // With rustls' buffered ServerConnection the Rust heap alone was
    // 6.3 KiB: 4 KiB of it the deframer buffer kept while idle. See
    // docs/architecture.md, "Memory per idle connection".
    assert!(
        per < 3 * 1024,
        "{per} bytes of Rust heap per idle TLS connection"
    );
    assert!(
        per_malloc < 5 * 1024,
        "{per_malloc} bytes of malloc per idle TLS connection"
    );
}
