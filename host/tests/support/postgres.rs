//! A real PostgreSQL server per test, from Debian's packages. Its processes run as `nobody`
//! because postgres refuses to run as root, and the tests run as root; everything it writes
//! stays in its own temporary directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A PostgreSQL server of its own for one test: initdb'd into a temporary directory, on a loopback port, stopped and removed on drop.
pub struct Postgres {
    pub port: u16,
    pub url: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The temporary directory as text: also the server's unix socket directory.
    home: String,
    data: String,
    log: String,
}

impl Postgres {
    /// Starts a fresh server; blocks until it accepts connections and database `weft` exists.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`] taking TCP connections over TLS only, with this certificate and
    /// key (PEM).
    pub fn start_tls(cert: &str, key: &str) -> Postgres {
        Postgres::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Postgres {
        // postgresql-common comes with every server package, and the server binaries are not on
        // the PATH, so its `pg_ctlcluster` is what says one is installed.
        super::netns::ensure_packages(&[("pg_ctlcluster", "postgresql")]);
        let bin = debian_bin_dir();
        // /tmp rather than $TMPDIR: `nobody` must be able to reach it, and a socket path must
        // stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("weft-pg-")
            .tempdir_in("/tmp")
            .expect("make a temporary directory for postgres");
        let home = dir.path().to_str().expect("a UTF-8 temp path").to_string();
        let out = Command::new("chown")
            .args(["nobody", &home])
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "`chown nobody {home}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // Another test may take the port before postgres binds it; then start fails loudly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        // Made before anything runs, so a panic below still stops the server and removes the
        // directory when `pg` drops.
        let pg = Postgres {
            port,
            url: format!("postgres://weft@127.0.0.1:{port}/weft"),
            bin,
            data: format!("{home}/data"),
            log: format!("{home}/postgres.log"),
            home,
            dir,
        };
        // `--no-sync`: the cluster dies with the test, so syncing its files only costs time.
        // `-U weft` makes `weft` the bootstrap superuser; no second role is needed.
        pg.must(
            "initdb",
            &format!(
                "-D {} -U weft --auth=trust --locale=C --encoding=UTF8 --no-sync",
                pg.data
            ),
        );
        // Only loopback TCP and the private socket directory, both without a password.
        let tcp = if tls.is_some() { "hostssl" } else { "host" };
        std::fs::write(
            format!("{}/pg_hba.conf", pg.data),
            format!("local all all trust\n{tcp} all all 127.0.0.1/32 trust\n"),
        )
        .expect("write pg_hba.conf");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{}/postgresql.conf", pg.data))
            .expect("open postgresql.conf");
        // Later lines win; a small server, since CI runs several of them on 2 cores.
        write!(
            conf,
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = 100\nshared_buffers = 16MB\n",
            pg.home
        )
        .expect("write postgresql.conf");
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = format!("{}/{name}", pg.data);
                std::fs::write(&path, pem).expect("write a TLS file");
                // postgres reads its key only when the key is its own and private.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                let out = Command::new("chown")
                    .args(["nobody", &path])
                    .output()
                    .expect("run chown");
                assert!(out.status.success(), "chown {path}");
            }
            writeln!(conf, "ssl = on").expect("write postgresql.conf");
        }
        pg.launch();
        pg.must(
            "createdb",
            &format!("-h {} -p {port} -U weft weft", pg.home),
        );
        pg
    }

    /// Stops it (`pg_ctl stop -m fast`), keeping its data; returns once it has stopped.
    pub fn stop(&mut self) {
        self.must(
            "pg_ctl",
            &format!("stop -D {} -m fast -w -t 60 -s", self.data),
        );
    }

    /// Starts it again on the same port with the same data; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Starts the server and waits until it answers over TCP, which is how tests reach it.
    fn launch(&self) {
        let out = self
            .as_nobody(
                "pg_ctl",
                &format!("start -D {} -l {} -w -t 60 -s", self.data, self.log),
            )
            .expect("run pg_ctl start via runuser");
        assert!(
            out.status.success(),
            "`pg_ctl start` on port {} failed: {}\n--- log tail ---\n{}",
            self.port,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log_tail()
        );
        let port = self.port;
        // `-d postgres`: `weft` may not exist yet, and asking for it would fill the log.
        let args = format!("-h 127.0.0.1 -p {port} -U weft -d postgres -q");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .as_nobody("pg_isready", &args)
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "postgres on 127.0.0.1:{port} never accepted connections\n--- log tail ---\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one of the server's tools as `nobody`, panicking with its stderr when it fails.
    fn must(&self, tool: &str, args: &str) {
        let out = self
            .as_nobody(tool, args)
            .unwrap_or_else(|e| panic!("run {tool} via runuser: {e}"));
        assert!(
            out.status.success(),
            "`{tool} {args}` failed ({}): {} {}\n--- log tail ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim(),
            self.log_tail()
        );
    }

    /// Runs `tool` with `args` split at spaces, which no argument holds: the only paths are
    /// under `/tmp/weft-pg-<letters and digits>`.
    fn as_nobody(&self, tool: &str, args: &str) -> std::io::Result<Output> {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "nobody", "--"])
            .arg(self.bin.join(tool))
            .args(args.split_whitespace())
            // `nobody` may not be allowed into the test's own working directory.
            .current_dir(self.dir.path());
        // The test's environment may aim PG* variables at some other server or options.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                cmd.env_remove(name);
            }
        }
        cmd.output()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the data goes with the directory, so a clean shutdown buys nothing. The pid
        // file says a server may be running, a half-started one included.
        if Path::new(&self.data).join("postmaster.pid").exists() {
            let immediate = format!("stop -D {} -m immediate -w -t 60 -s", self.data);
            let _ = self.as_nobody("pg_ctl", &immediate);
        }
        // The directory itself goes when `dir` drops, after this.
    }
}

/// Debian's server binaries of the highest installed version (`/usr/lib/postgresql/<v>/bin`);
/// never the PATH's, where an unrelated `initdb` may come first.
fn debian_bin_dir() -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/<version>/bin/initdb: is Debian's postgresql installed?")
}
