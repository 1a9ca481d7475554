//! A private redis-server per test, shared by the broker and cluster test
//! crates (each includes this file with `#[path]`): unix socket in a temp
//! dir, no persistence, daemonized, stopped on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether redis-server is installed; tests skip (with a message) if not.
pub fn have_redis() -> bool {
    let ok = ["redis-server", "redis-cli"].iter().all(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!(
            "SKIPPED: redis-server or redis-cli is not installed (apt-get install redis-server)"
        );
    }
    ok
}

/// redis-server on a unix socket in a temp dir, no persistence, DEBUG
/// allowed from local clients (the stall tests use `DEBUG SLEEP`).
pub struct RedisServer {
    dir: PathBuf,
    /// More redis-server arguments (TLS), given again on every launch.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With more redis-server arguments (e.g. `--tls-port` and its files).
    pub fn start_with(extra: &[String]) -> RedisServer {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsrelay-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = RedisServer {
            dir,
            extra: extra.to_vec(),
        };
        s.launch();
        s
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts redis-server (again, empty) on the same socket.
    pub fn launch(&self) {
        let _ = std::fs::remove_file(self.socket());
        let st = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--daemonize", "yes", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local", "--pidfile"])
            .arg(self.dir.join("redis.pid"))
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.extra)
            .status()
            .expect("redis-server");
        assert!(st.success());
        let until = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < until,
                "redis-server did not start: {}",
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs redis-cli against this server; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (no save) and waits until its socket is gone.
    pub fn shutdown(&self) {
        let _ = self.cli(&["SHUTDOWN", "NOSAVE"]);
        let until = Instant::now() + Duration::from_secs(10);
        while self.socket().exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
