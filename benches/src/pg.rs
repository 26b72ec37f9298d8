//! A PostgreSQL primary and streaming standby on loopback, created in a temporary directory from the machine's
//! own PostgreSQL binaries (Debian's `postgresql` package), for the replication comparisons; torn down on drop.
//! When run as root, the servers run as the `postgres` user (PostgreSQL refuses to run as root).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// A running primary + standby pair.
pub struct PgPair {
    dir: PathBuf,
    bin: PathBuf,
    /// The primary's port.
    pub primary_port: u16,
    /// The standby's port.
    pub standby_port: u16,
    as_postgres: bool,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The directory of PostgreSQL's server binaries (the newest under `/usr/lib/postgresql`).
pub fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

impl PgPair {
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Creates and starts a primary (fsync on, `wal_level=replica`) and a standby streaming from it, in `dir`.
    ///
    /// # Errors
    /// If PostgreSQL is missing or a step fails (the message says which).
    pub fn start(dir: &Path) -> Result<PgPair, String> {
        let bin = find_bin().ok_or(
            "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)",
        )?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        // SAFETY-free check of the effective uid through /proc.
        let as_postgres = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false);
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err("chown to postgres failed".into());
            }
        }
        let pair = PgPair {
            dir: dir.to_owned(),
            bin,
            primary_port: free_port()?,
            standby_port: free_port()?,
            as_postgres,
        };
        let p = dir.join("primary");
        let s = dir.join("standby");
        let (ps, ss) = (p.to_str().unwrap_or_default(), s.to_str().unwrap_or_default());
        pair.run(
            "initdb",
            &["-D", ps, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        )?;
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_wal_senders = 4\nfsync = on\nsynchronous_commit = on\nwal_sync_method = fdatasync\n\
             full_page_writes = on\nshared_buffers = 128MB\n",
            pair.primary_port,
            dir.display()
        );
        append(&p.join("postgresql.conf"), &conf)?;
        append(
            &p.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        )?;
        pair.run("pg_ctl", &["-D", ps, "-l", &format!("{ps}.log"), "-w", "start"])?;
        let port = pair.primary_port.to_string();
        pair.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                ss,
                "-R",
                "-X",
                "stream",
            ],
        )?;
        append(
            &s.join("postgresql.conf"),
            &format!(
                "port = {}\nhot_standby = on\nwal_receiver_status_interval = 1s\n",
                pair.standby_port
            ),
        )?;
        if as_postgres {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status();
        }
        pair.run("pg_ctl", &["-D", ss, "-l", &format!("{ss}.log"), "-w", "start"])?;
        // Wait until the standby streams.
        let mut c = pair.connect()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .map_err(|e| e.to_string())?
                .get(0);
            if n > 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err("the standby did not start streaming within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.batch_execute("CREATE TABLE kv (k BIGINT PRIMARY KEY, v BYTEA NOT NULL)")
            .map_err(|e| e.to_string())?;
        Ok(pair)
    }

    /// A client connection to the primary.
    ///
    /// # Errors
    /// If it cannot connect.
    pub fn connect(&self) -> Result<postgres::Client, String> {
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.primary_port
            ),
            postgres::NoTls,
        )
        .map_err(|e| format!("connecting to PostgreSQL: {e}"))
    }

    /// Makes commits wait for the standby (`synchronous_standby_names = '*'`) or not.
    ///
    /// # Errors
    /// If the setting cannot be applied.
    pub fn set_synchronous(&self, on: bool) -> Result<(), String> {
        let mut c = self.connect()?;
        let names = if on { "*" } else { "" };
        // Two statements: ALTER SYSTEM may not run inside the implicit transaction of a multi-statement query.
        c.batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'"))
            .map_err(|e| format!("ALTER SYSTEM: {e:?}"))?;
        c.batch_execute("SELECT pg_reload_conf()")
            .map_err(|e| format!("reload: {e:?}"))?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for node in ["standby", "primary"] {
            let d = self.dir.join(node);
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    d.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}
