//! A real `redis-server` on a free loopback port, started and killed by the test.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::harness::free_port;

/// A `redis-server` process owned by one test; killed (and its files removed) on drop.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for servers started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    /// Its certificate files, kept while it may restart.
    tls_files: Option<Arc<TlsFiles>>,
    dir: PathBuf,
    appendonly: bool,
    extra_args: Vec<String>,
    child: Option<Child>,
}

fn binary(name: &str) -> &str {
    let found = Command::new("which")
        .arg(name)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "`{name}` is not installed: install it with `apt-get install redis-server` \
         (tests/run.sh installs it when missing)"
    );
    name
}

impl RedisServer {
    /// Starts an empty Redis; with `appendonly`, every write is fsynced to an AOF so a restart
    /// keeps acknowledged data.
    pub fn start(appendonly: bool) -> RedisServer {
        Self::start_with(appendonly, Vec::new())
    }

    fn start_with(appendonly: bool, extra_args: Vec<String>) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sb-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            tls_port: None,
            tls_files: None,
            dir,
            appendonly,
            extra_args,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a Redis that also serves TLS on a second port, with a certificate for
    /// `localhost` signed by a CA made here; returns it and the CA's PEM. Clients need no
    /// certificate of their own. The plain port stays for `redis-cli`.
    pub fn start_tls() -> (RedisServer, String) {
        let tls = Arc::new(TlsFiles::create());
        let server = Self::start_with_tls(&tls, Vec::new());
        (server, tls.ca_pem.clone())
    }

    fn start_with_tls(tls: &Arc<TlsFiles>, mut extra_args: Vec<String>) -> RedisServer {
        let tls_port = free_port();
        extra_args.extend(["--tls-port".to_owned(), tls_port.to_string()]);
        extra_args.extend(tls.args.iter().cloned());
        let mut server = Self::start_with(false, extra_args);
        server.tls_port = Some(tls_port);
        server.tls_files = Some(Arc::clone(tls));
        server
    }

    /// `rediss://` to the TLS port, by the name its certificate is for.
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://localhost:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "a short bounded wait for the child to answer; also runs outside any runtime"
    )]
    fn spawn(&mut self) {
        let child = Command::new(binary("redis-server"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli` against this server; `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new(binary("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Stops the process; `keep_data` restarts it from its AOF, otherwise empty.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self, keep_data: bool) {
        if !keep_data {
            let _ = std::fs::remove_dir_all(&self.dir);
            std::fs::create_dir_all(&self.dir).unwrap();
        }
        self.spawn();
    }

    /// Kills every normal client connection (the nodes' links and readers).
    pub fn kill_clients(&self) -> u64 {
        self.cli(&["CLIENT", "KILL", "TYPE", "normal"])
            .and_then(|killed| killed.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // Continue a paused process so that it can be reaped at once.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate for `localhost` and `127.0.0.1` signed by a CA made here, as files in a
/// directory that lives as long as this value, and the `redis-server` arguments that serve
/// TLS with them (no client certificates asked).
pub struct TlsFiles {
    dir: PathBuf,
    args: Vec<String>,
    pub ca_pem: String,
}

impl TlsFiles {
    pub fn create() -> TlsFiles {
        let dir = std::env::temp_dir().join(format!(
            "sb-redis-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL (redis-cli) takes a leaf named like its issuer for a
        // self-signed certificate and refuses it.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        // Cluster nodes are reached at the addresses Redis reports: 127.0.0.1.
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        };
        let args = vec![
            "--tls-cert-file".to_owned(),
            write("redis.crt", leaf.pem()),
            "--tls-key-file".to_owned(),
            write("redis.key", leaf_key.serialize_pem()),
            "--tls-ca-cert-file".to_owned(),
            write("ca.crt", ca.pem()),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        TlsFiles {
            dir,
            args,
            ca_pem: ca.pem(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-master Redis Cluster on free loopback ports, created with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    /// With TLS: the certificate files, kept while the cluster runs.
    pub tls: Option<Arc<TlsFiles>>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let masters = (0..3).map(|_| RedisServer::start_clustered()).collect();
        Self::create(masters, None)
    }

    /// The same over TLS: clients and the cluster bus speak TLS (`tls-cluster yes`), each
    /// node on its TLS port (and a plain one for `redis-cli` checks).
    pub fn start_tls() -> RedisCluster {
        let tls = Arc::new(TlsFiles::create());
        let mut args = RedisServer::CLUSTER_ARGS.map(str::to_owned).to_vec();
        args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
        let masters = (0..3)
            .map(|_| RedisServer::start_with_tls(&tls, args.clone()))
            .collect();
        Self::create(masters, Some(tls))
    }

    /// Joins `masters` into one cluster with `redis-cli --cluster create` (over TLS, at
    /// their TLS ports, when `tls` is given) and waits until it is up.
    fn create(masters: Vec<RedisServer>, tls: Option<Arc<TlsFiles>>) -> RedisCluster {
        let addresses: Vec<String> = masters
            .iter()
            .map(|master| {
                let port = if tls.is_some() {
                    master.tls_port.unwrap()
                } else {
                    master.port
                };
                format!("127.0.0.1:{port}")
            })
            .collect();
        let mut command = Command::new(binary("redis-cli"));
        if let Some(tls) = &tls {
            command.args(["--tls", "--cacert"]).arg(tls.ca_file());
        }
        let output = command
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(output.status.success(), "cluster create failed: {output:?}");
        let cluster = RedisCluster { masters, tls };
        cluster.wait_until_ok();
        cluster
    }

    /// `rediss://` seeds, for a cluster started with [`RedisCluster::start_tls`].
    pub fn tls_seeds(&self) -> Vec<String> {
        self.masters
            .iter()
            .map(|master| format!("rediss://127.0.0.1:{}", master.tls_port.unwrap()))
            .collect()
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "a short bounded wait for the cluster to converge"
    )]
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for master in &self.masters {
            while !master
                .cli(&["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "the cluster did not converge");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn seeds(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }
}

impl RedisServer {
    const CLUSTER_ARGS: [&str; 4] = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ];

    fn start_clustered() -> RedisServer {
        Self::start_with(false, Self::CLUSTER_ARGS.map(str::to_owned).to_vec())
    }
}
