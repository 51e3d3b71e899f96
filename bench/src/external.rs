//! The external runs: the real `canopy serve` binary in a process of its own, loaded by
//! `wrk` (Debian's `wrk` package) in another, the way pgbench and PostgreSQL are separate
//! processes. The in-process runs share one runtime between the load and the server; these
//! do not, so their figures are the ones the targets are judged on.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

/// A `canopy serve` child process, stopped when dropped: SIGTERM (it finishes and writes
/// out its log), then SIGKILL should it still run after 10 seconds.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `canopy` binary built beside this one (`cargo build --release -p api -p bench`).
fn canopy_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name("canopy");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --release -p api` (the external runs start it)",
        binary.display()
    );
    Ok(binary)
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident set (`VmRSS`) and its peak (`VmHWM`), in MiB.
    pub fn rss_mib(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = |key: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("no {key} in /proc/<pid>/status"))?;
            Ok(line.trim().trim_end_matches("kB").trim().parse::<f64>()?)
        };
        Ok((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
    }
}

/// Starts `canopy serve` with `env` (a test app's `CANOPY_*` variables) on a free port of
/// loopback, logging to a file as it would in production, and waits until it is live.
pub async fn serve(env: &BTreeMap<String, String>, name: &str) -> anyhow::Result<Server> {
    Ok(start(env, name, "/health/live", Duration::from_millis(50))
        .await?
        .0)
}

/// [`serve`], waiting for `path` to answer 2xx (asking every `poll`), and how long that
/// took from just before the process was started.
pub async fn start(
    env: &BTreeMap<String, String>,
    name: &str,
    path: &str,
    poll: Duration,
) -> anyhow::Result<(Server, Duration)> {
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::env::temp_dir().join(format!("canopy-bench-{name}-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log)?;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let child = Command::new(canopy_binary()?)
        .arg("serve")
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME"))
        .envs(env)
        .env("CANOPY_BIND", addr.to_string())
        .env("CANOPY_METRICS_BIND", "off")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting canopy serve")?;
    let mut server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            return Ok((server, started.elapsed()));
        }
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!("canopy serve exited with {status}; see {}", log.display());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "canopy serve did not answer {path} within 30 s; see {}",
            log.display()
        );
        tokio::time::sleep(poll).await;
    }
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkReport {
    /// Requests per second.
    pub rps: f64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
}

impl WrkReport {
    /// Prints `<prefix>_rps`, `_p50_ms` and `_p99_ms`.
    pub fn print(&self, prefix: &str) {
        println!("{prefix}_rps: {:.0}", self.rps);
        println!("{prefix}_p50_ms: {:.3}", self.p50_ms);
        println!("{prefix}_p99_ms: {:.3}", self.p99_ms);
    }
}

/// Runs `wrk` (two threads, `connections` keep-alive connections) against `url` for a
/// warm-up and then `duration`, with `script` (Lua) when given. Every answer must be a
/// 2xx: a run that saw others fails, so a misconfigured run cannot pass for a fast one.
pub fn wrk(
    url: &str,
    script: Option<&Path>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<WrkReport> {
    let run = |seconds: u64| -> anyhow::Result<String> {
        let mut command = Command::new("wrk");
        command
            .args(["-t2", "--latency"])
            .args(["-c", &connections.max(2).to_string()])
            .args(["-d", &format!("{seconds}s")]);
        if let Some(script) = script {
            command.arg("-s").arg(script);
        }
        let output = command
            .arg(url)
            .output()
            .context("running wrk (Debian: apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        anyhow::ensure!(
            output.status.success(),
            "wrk failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        anyhow::ensure!(
            !stdout.contains("Non-2xx or 3xx responses") && !stdout.contains("Socket errors"),
            "wrk saw failures:\n{stdout}"
        );
        Ok(stdout)
    };
    run(warmup.as_secs().max(1))?;
    parse_wrk(&run(duration.as_secs().max(1))?)
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkReport> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no `{prefix}` in wrk's output:\n{out}"))
    };
    let rps = field("Requests/sec:")?.parse::<f64>()?;
    Ok(WrkReport {
        rps,
        p50_ms: millis(field("50%")?)?,
        p99_ms: millis(field("99%")?)?,
    })
}

/// wrk's `812.00us`, `1.23ms`, `2.01s` in milliseconds.
fn millis(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        anyhow::bail!("a latency without unit: {text}")
    };
    Ok(number.parse::<f64>()? * factor)
}

/// A Lua script for wrk sending `GET path` with each `(tenant, bearer token)` in turn (the
/// threads start at different offsets).
pub fn rotating_get(dir: &Path, path: &str, credentials: &[(String, String)]) -> PathBuf {
    let entries: Vec<String> = credentials
        .iter()
        .map(|(tenant, token)| format!("{{{tenant:?}, {token:?}}}"))
        .collect();
    let script = format!(
        r#"local credentials = {{ {entries} }}
local counter = 0
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
function init(args)
  counter = offset or 0
end
function request()
  counter = counter + 1
  local c = credentials[(counter % #credentials) + 1]
  return wrk.format("GET", {path:?}, {{ ["X-Tenant"] = c[1], ["Authorization"] = "Bearer " .. c[2] }})
end
"#,
        entries = entries.join(", "),
    );
    let file = dir.join("rotating_get.lua");
    std::fs::write(&file, script).expect("writing the wrk script");
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n  Latency Distribution\n     50%  412.00us\n     75%    1.20ms\n     90%    2.00ms\n     99%    3.50ms\n  100 requests in 5.00s, 1.00MB read\nRequests/sec:  20000.50\nTransfer/sec:      1.00MB\n";
        let report = parse_wrk(out).expect("parsed");
        assert!((report.rps - 20000.5).abs() < 1e-6);
        assert!((report.p50_ms - 0.412).abs() < 1e-9);
        assert!((report.p99_ms - 3.5).abs() < 1e-9);
    }
}
