//! A real NGINX in front of test gateways, configured from the same template
//! as the shipped nginx/nginx.conf (scripts/nginx-conf.sh), on free loopback
//! ports in a temp dir; and a lookup for the external tools the deployment
//! checks run (nginx, docker-compose, kubernetes-validate, ...), which fails
//! with a message naming scripts/install-test-deps.sh when one is missing.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Finds an external program on PATH or in the sbin directories (nginx lives
/// in /usr/sbin, which a non-root PATH often lacks). Panics, naming the
/// install script, when it is missing: these checks are never skipped.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; the deployment checks need it. \
                 Run scripts/install-test-deps.sh (or `make test-deps`)"
            )
        })
}

/// Runs a command to completion and returns its output (never fails on status).
pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Text of both output streams, for failure messages.
pub fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Renders nginx/nginx.conf.in with `scripts/nginx-conf.sh`; `vars` are
/// its NGINX_* settings (none: the shipped configuration).
pub fn render_config(vars: &[(&str, String)]) -> String {
    let root = repo_root();
    let output = run(Command::new("bash")
        .arg(root.join("scripts/nginx-conf.sh"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str()))));
    assert!(
        output.status.success(),
        "scripts/nginx-conf.sh failed: {}",
        printed(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Makes a self-signed pair with `scripts/gen-cert.sh` in `dir`.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    tool("openssl");
    let output = run(Command::new("sh")
        .arg(repo_root().join("scripts/gen-cert.sh"))
        .arg(dir));
    assert!(
        output.status.success(),
        "scripts/gen-cert.sh failed: {}",
        printed(&output)
    );
    (dir.join("tls.crt"), dir.join("tls.key"))
}

/// Runs `nginx -t` on `config` (a file in `dir`, which is NGINX's prefix).
pub fn nginx_test(dir: &Path, config: &Path) -> Output {
    run(Command::new(tool("nginx"))
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(config)
        .arg("-e")
        .arg(dir.join("error.log")))
}

/// A running NGINX master process in a temp dir, stopped when dropped.
pub struct Nginx {
    child: Option<Child>,
    /// Plain HTTP (ws://) listener.
    pub http: SocketAddr,
    /// TLS (wss://) listener with a self-signed certificate.
    pub https: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts NGINX with the template's configuration in front of `gateways`.
    pub fn start(gateways: &[SocketAddr]) -> Nginx {
        let nginx = tool("nginx");
        let dir = tempfile::tempdir().unwrap();
        // Worker processes run as an unprivileged user when the tests run as
        // root; they must reach the temp dirs below.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let temp = dir.path().join("tmp");
        std::fs::create_dir(&temp).unwrap();
        let (cert, key) = make_cert(dir.path());
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let upstreams = gateways
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let text = render_config(&[
            ("NGINX_UPSTREAMS", upstreams),
            ("NGINX_HTTP_LISTEN", http.to_string()),
            ("NGINX_HTTPS_LISTEN", https.to_string()),
            ("NGINX_TLS_CERT", cert.display().to_string()),
            ("NGINX_TLS_KEY", key.display().to_string()),
            ("NGINX_PID_FILE", path("nginx.pid")),
            ("NGINX_ERROR_LOG", path("error.log")),
            ("NGINX_ACCESS_LOG", path("access.log")),
            ("NGINX_TEMP_DIR", temp.display().to_string()),
            ("NGINX_WORKER_CONNECTIONS", "1024".into()),
            ("NGINX_WORKER_RLIMIT_NOFILE", "4096".into()),
        ]);
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, text).unwrap();
        let checked = nginx_test(dir.path(), &config);
        assert!(
            checked.status.success(),
            "nginx -t refused the generated config: {}",
            printed(&checked)
        );

        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child: Some(child),
            http,
            https,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(http).is_err() || TcpStream::connect(https).is_err() {
            let exited = nginx.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nginx did not start ({exited:?}); error log:\n{}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.http)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM makes the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
