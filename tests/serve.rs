//! Serving: the batcher in-process (each caller's answer bitwise its
//! alone-answer, the bounded queue, cancellation, drain), and `elmo serve`
//! started and stopped by each test: the endpoints against the golden
//! fixtures, every limit and bad request, a client that disconnects, SIGTERM
//! under load, and a soak with flat memory. Traffic stays on loopback, with
//! bounded counts; every wait is bounded.

mod common;

use common::{Golden, assert_close, fixture, golden_files, tiny_model};
use elmo::layer::{OutputMode, select_output, starting_mix};
use elmo::mix::MixConfig;
use elmo::serve::{Batcher, BatcherConfig};
use elmo::{BiLmOutput, ElmoModel, Error};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- batcher

fn bits(o: &BiLmOutput) -> (Vec<usize>, usize, usize, usize, Vec<u32>) {
    (
        o.lengths.clone(),
        o.n_layers,
        o.max_len,
        o.dim,
        o.data.iter().map(|x| x.to_bits()).collect(),
    )
}

/// Deterministic sentences of 0..=max tokens from a small vocabulary.
fn sentences(seed: u64, n: usize, max: usize) -> Vec<Vec<String>> {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", ".", "Hello", "world", "ELMo", "<S>", "naïve",
    ];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let len = next() % (max + 1);
            (0..len).map(|_| words[next() % words.len()].to_string()).collect()
        })
        .collect()
}

#[test]
fn batcher_gives_each_caller_its_alone_answer_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(common::small_model(dir.path()));
    let batcher = Arc::new(
        Batcher::new(
            Arc::clone(&model),
            BatcherConfig {
                max_wait: Duration::from_millis(20),
                ..BatcherConfig::default()
            },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (b, m) = (Arc::clone(&batcher), Arc::clone(&model));
            std::thread::spawn(move || {
                for i in 0..12u64 {
                    let req = sentences(t * 100 + i, 1 + (i as usize % 3), 14);
                    let got = b.embed(req.clone()).unwrap();
                    let alone = m.embed(&req).unwrap();
                    assert_eq!(bits(&got), bits(&alone), "thread {t} request {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = batcher.stats();
    assert_eq!(s.completed, 96);
    assert_eq!(s.submitted, 96);
    // Batches really mixed callers: fewer batches than requests means some
    // batch held requests of two callers or more (8 at once, 20 ms to gather).
    assert!(s.batches < 96, "{s:?}");
    assert_eq!(s.batch_sentences.count, s.batches);
}

#[test]
fn batcher_queue_is_bounded_and_drains_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let b = Batcher::new(
        Arc::clone(&model),
        BatcherConfig {
            // The worker waits for a batch to fill, so the queue stays full.
            max_wait: Duration::from_secs(30),
            max_batch_sentences: 1000,
            queue_capacity: 2,
            ..BatcherConfig::default()
        },
    )
    .unwrap();
    let t1 = b.submit(sentences(1, 2, 6)).unwrap();
    let t2 = b.submit(sentences(2, 1, 6)).unwrap();
    match b.submit(sentences(3, 1, 6)) {
        Err(Error::Overloaded { queued: 2, capacity: 2 }) => {}
        Err(e) => panic!("expected Overloaded, got {e}"),
        Ok(_) => panic!("expected Overloaded, got a ticket"),
    }
    assert_eq!(b.stats().overloaded, 1);
    assert_eq!(b.stats().queued, 2);
    // Shutdown runs what is queued at once (no 30 s wait), refuses new work.
    b.shutdown();
    assert!(matches!(b.submit(sentences(4, 1, 3)), Err(Error::ShutDown)));
    let (r1, r2) = (t1.wait().unwrap(), t2.wait().unwrap());
    assert_eq!(bits(&r1.output), bits(&model.embed(&sentences(1, 2, 6)).unwrap()));
    assert_eq!(bits(&r2.output), bits(&model.embed(&sentences(2, 1, 6)).unwrap()));
    assert_eq!(r1.batch_sentences, 3, "both requests in one batch");
}

#[test]
fn batcher_skips_a_dropped_ticket_and_runs_oversized_requests_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let b = Batcher::new(
        Arc::clone(&model),
        BatcherConfig {
            max_wait: Duration::from_millis(200),
            max_batch_tokens: 8,
            ..BatcherConfig::default()
        },
    )
    .unwrap();
    let gone = b.submit(vec![vec!["never".into(), "computed".into()]]).unwrap();
    drop(gone);
    // 3 x 10 padded positions: over max_batch_tokens, so it runs alone, whole.
    let big = sentences(9, 3, 10);
    let big: Vec<Vec<String>> = big
        .into_iter()
        .map(|mut s| {
            s.resize(10, "x".into());
            s
        })
        .collect();
    let got = b.embed(big.clone()).unwrap();
    assert_eq!(bits(&got), bits(&model.embed(&big).unwrap()));
    let s = b.stats();
    assert_eq!(s.cancelled, 1, "{s:?}");
    assert_eq!(s.sentences, 3, "the dropped request was never computed: {s:?}");
    assert_eq!(s.batches, 1);
    // An empty request and an empty sentence are answered too.
    assert_eq!(b.embed(vec![]).unwrap().lengths, Vec::<usize>::new());
    assert_eq!(b.embed(vec![vec![]]).unwrap().lengths, vec![0]);
}

#[test]
fn an_abandoned_request_holds_no_place_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let b = Batcher::new(
        Arc::clone(&model),
        BatcherConfig {
            // The worker waits for a batch to fill, so the queue stays full.
            max_wait: Duration::from_secs(30),
            max_batch_sentences: 1000,
            queue_capacity: 2,
            ..BatcherConfig::default()
        },
    )
    .unwrap();
    let kept = b.submit(sentences(1, 1, 6)).unwrap();
    drop(b.submit(sentences(2, 1, 6)).unwrap()); // the caller went away
    // The queue holds 2: the live request and this one, not the abandoned one.
    let retry = b.submit(sentences(3, 1, 6)).expect("refused for an abandoned request");
    assert!(matches!(
        b.submit(sentences(4, 1, 6)),
        Err(Error::Overloaded { queued: 2, .. })
    ));
    // The queue length the metrics show counts live requests only.
    drop(retry);
    let s = b.stats();
    assert_eq!((s.queued, s.cancelled, s.overloaded), (1, 2, 1), "{s:?}");
    b.shutdown();
    assert_eq!(
        bits(&kept.wait().unwrap().output),
        bits(&model.embed(&sentences(1, 1, 6)).unwrap())
    );
    assert_eq!(b.stats().sentences, 1, "an abandoned request was computed");
}

/// "No deadline" and "no bound" spelled as the largest values: the
/// worker's deadline overflowed (a panic, and every ticket then waited
/// forever), and the queue's bound was allocated up front (an abort).
#[test]
fn batcher_takes_the_largest_wait_and_queue_bound() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let b = Batcher::new(
        Arc::clone(&model),
        BatcherConfig {
            max_wait: Duration::MAX,
            max_batch_sentences: 2,
            queue_capacity: usize::MAX,
            ..BatcherConfig::default()
        },
    )
    .unwrap();
    // Two sentences fill a batch: it runs without a deadline.
    let (t1, t2) = (
        b.submit(sentences(1, 1, 6)).unwrap(),
        b.submit(sentences(2, 1, 6)).unwrap(),
    );
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = (t1.wait(), t2.wait());
        let _ = done_tx.send(r);
    });
    let (r1, r2) = done_rx.recv_timeout(Duration::from_secs(30)).expect("answered");
    assert_eq!(
        bits(&r1.unwrap().output),
        bits(&model.embed(&sentences(1, 1, 6)).unwrap())
    );
    assert_eq!(
        bits(&r2.unwrap().output),
        bits(&model.embed(&sentences(2, 1, 6)).unwrap())
    );
    // A lone request waits for company until shutdown, which runs it.
    let t3 = b.submit(sentences(3, 1, 6)).unwrap();
    b.shutdown();
    assert_eq!(
        bits(&t3.wait().unwrap().output),
        bits(&model.embed(&sentences(3, 1, 6)).unwrap())
    );
}

#[test]
fn batcher_refuses_zero_limits() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    for cfg in [
        BatcherConfig {
            queue_capacity: 0,
            ..BatcherConfig::default()
        },
        BatcherConfig {
            max_batch_tokens: 0,
            ..BatcherConfig::default()
        },
        BatcherConfig {
            workers: 0,
            ..BatcherConfig::default()
        },
    ] {
        assert!(matches!(Batcher::new(Arc::clone(&model), cfg), Err(Error::Input(_))));
    }
}

#[test]
fn elmo_serve_refuses_a_zero_limit_at_start() {
    for (flag, name) in [
        ("--max-concurrent", "max_concurrent"),
        ("--max-inputs", "max_inputs"),
        ("--max-body-bytes", "max_body_bytes"),
        ("--max-tokens-per-request", "max_tokens_per_request"),
        ("--max-tokens-per-sentence", "max_tokens_per_sentence"),
        ("--read-timeout-s", "read_timeout"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_elmo"))
            .args(["serve", "--port", "0", flag, "0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} 0: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flag} 0: {err}");
        assert!(err.contains(name), "{flag} 0: {err}");
    }
}

// ---------------------------------------------------------------- server

/// `elmo serve` on a free loopback port, its standard error collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elmo"));
        cmd.args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A test run started in the background of a shell inherits SIGINT
        // ignored, and so would the server: give it the default back, so
        // the Ctrl-C test means the same wherever the tests run.
        // SAFETY: between fork and exec only signal(2), async-signal-safe,
        // is called; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start elmo serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addr = None;
        let mut early = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("listening on http://") {
                addr = Some(a.to_string());
                break;
            }
            early.push(line);
        }
        let addr = addr.unwrap_or_else(|| panic!("elmo serve did not start: {early:?}"));
        let log = Arc::new(Mutex::new(early));
        let l = Arc::clone(&log);
        // Keep reading: a full pipe would block the server's log writes.
        std::thread::spawn(move || {
            for line in lines.map_while(|l| l.ok()) {
                l.lock().unwrap().push(line);
            }
        });
        Server { child, addr, log }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Resp {
        request(&self.addr, method, path, body.as_bytes(), &[])
    }

    fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, &body.to_string())
    }

    fn metric(&self, line_start: &str) -> f64 {
        let m = self.call("GET", "/metrics", "");
        assert_eq!(m.status, 200);
        m.text()
            .lines()
            .find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().parse::<f64>().unwrap()))
            .unwrap_or(0.0)
    }

    /// Waits (at most 20 s) until `metric` reaches `at_least`.
    fn wait_metric(&self, line_start: &str, at_least: f64) {
        let t0 = Instant::now();
        while self.metric(line_start) < at_least {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{line_start} never reached {at_least}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0);
    }

    fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits (at most 30 s) for the process to exit.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "elmo serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// An error answer: `status` with `{"error": str, "error_type": str}`.
    fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        let j = self.json();
        assert!(j["error"].as_str().is_some_and(|s| !s.is_empty()), "{what}: {j}");
        assert!(j["error_type"].as_str().is_some(), "{what}: {j}");
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body).
fn read_response(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(n) = get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp { status, headers, body })
}

fn try_request(addr: &str, method: &str, path: &str, body: &[u8], extra: &[&str]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n");
    if !extra
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("transfer-encoding"))
    {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    for h in extra {
        head += h;
        head += "\r\n";
    }
    head += "\r\n";
    // One write: a second small one would wait for a delayed ACK (Nagle).
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    s.write_all(&msg)?;
    read_response(&mut BufReader::new(s))
}

fn request(addr: &str, method: &str, path: &str, body: &[u8], extra: &[&str]) -> Resp {
    try_request(addr, method, path, body, extra).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A keep-alive connection: one request after another.
struct Conn {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            reader: BufReader::new(s),
            addr: addr.to_string(),
        }
    }
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<Resp> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        // One write: a second small one would wait for a delayed ACK (Nagle).
        self.reader.get_mut().write_all((head + body).as_bytes())?;
        read_response(&mut self.reader)
    }
}

/// The tiny model converted into `dir`, and its path.
fn tiny_file(dir: &Path) -> (ElmoModel, PathBuf) {
    let m = tiny_model(dir);
    (m, dir.join("model.safetensors"))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn endpoints_match_the_golden_values_and_the_library_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = tiny_file(dir.path());
    let server = Server::start(&path, &[]);
    let mix = starting_mix(&model, None, None, MixConfig::default(), false).unwrap();
    let custom = starting_mix(
        &model,
        Some(vec![0.3, -0.7, 1.1]),
        Some(0.8),
        MixConfig::default(),
        false,
    )
    .unwrap();
    for f in golden_files(&fixture("tiny"), "stateless_batch_") {
        let g = Golden::load(&f);
        let tokens = g.tokens();
        let (shape, lm) = g.f32("lm_embeddings"); // (B, L + 1, T, 2P)
        let (k, t, d) = (shape[1], shape[2], shape[3]);
        // /embed_all all: per input (L + 1, n, 2P), against TensorFlow.
        let r = server.post("/embed_all", json!({"inputs": tokens}));
        assert_eq!(r.status, 200, "{}", r.text());
        let all = r.json();
        assert_eq!(all.as_array().unwrap().len(), tokens.len());
        for (b, sent) in tokens.iter().enumerate() {
            let layers = all[b].as_array().unwrap();
            assert_eq!(layers.len(), k);
            for (kk, layer) in layers.iter().enumerate() {
                let rows = layer.as_array().unwrap();
                assert_eq!(rows.len(), sent.len());
                for (j, row) in rows.iter().enumerate() {
                    let o = ((b * k + kk) * t + j) * d;
                    assert_close(&format!("{} all", g.name), &f32s(row), &lm[o..o + d], 2e-5, 1e-4);
                }
            }
        }
        // /embed: the pooled vector, against TensorFlow's masked mean of
        // its mix, with the default and with per-request mix parameters.
        let (_, want) = g.f32("elmo_default_mean");
        let r = server.post("/embed", json!({"inputs": tokens}));
        assert_eq!(r.status, 200, "{}", r.text());
        let got: Vec<f32> = r.json().as_array().unwrap().iter().flat_map(f32s).collect();
        assert_close(&format!("{} default", g.name), &got, &want, 2e-5, 1e-4);
        // ... and bitwise what the library gives for the request alone.
        let alone = select_output(model.embed(&tokens).unwrap(), OutputMode::Default, &mix).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            alone.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{}",
            g.name
        );
        let (_, want) = g.f32("elmo_custom_mean");
        let r = server.post(
            "/embed",
            json!({"inputs": tokens, "mix_weights": [0.3, -0.7, 1.1], "gamma": 0.8}),
        );
        let got: Vec<f32> = r.json().as_array().unwrap().iter().flat_map(f32s).collect();
        assert_close(&format!("{} custom", g.name), &got, &want, 2e-5, 1e-4);
        // /embed_all elmo with the custom mix: (n, 2P) per input.
        let (_, want) = g.f32("elmo_custom"); // (B, T, 2P)
        let r = server.post(
            "/embed_all",
            json!({"inputs": tokens, "output": "elmo", "mix_weights": [0.3, -0.7, 1.1], "gamma": 0.8}),
        );
        let v = r.json();
        for (b, sent) in tokens.iter().enumerate() {
            for j in 0..sent.len() {
                let o = (b * t + j) * d;
                assert_close("elmo", &f32s(&v[b][j]), &want[o..o + d], 2e-5, 1e-4);
            }
        }
        let alone = select_output(model.embed(&tokens).unwrap(), OutputMode::Elmo, &custom).unwrap();
        assert_eq!(alone.shape(), &[tokens.len(), t, d]);
    }
    // top, word_emb, lstm_outputs1: shapes (n, dim) and the golden layers.
    let g = Golden::load(&golden_files(&fixture("tiny"), "stateless_batch_")[0]);
    let tokens = g.tokens();
    let (shape, lm) = g.f32("lm_embeddings");
    let (k, t, d) = (shape[1], shape[2], shape[3]);
    for (output, layer, width) in [("top", k - 1, d), ("lstm_outputs1", 1, d), ("word_emb", 0, d / 2)] {
        let v = server
            .post("/embed_all", json!({"inputs": tokens, "output": output}))
            .json();
        for (b, sent) in tokens.iter().enumerate() {
            assert_eq!(v[b].as_array().unwrap().len(), sent.len(), "{output}");
            for j in 0..sent.len() {
                let o = ((b * k + layer) * t + j) * d;
                assert_close(output, &f32s(&v[b][j]), &lm[o..o + width], 2e-5, 1e-4);
            }
        }
    }
    // Plain strings are split on whitespace: the same vector as the tokens.
    let joined: Vec<String> = tokens.iter().map(|s| s.join(" ")).collect();
    let a = server.post("/embed", json!({"inputs": joined})).json();
    let b = server.post("/embed", json!({"inputs": tokens})).json();
    assert_eq!(a, b);
    let one = server.post("/embed", json!({"inputs": joined[0]})).json();
    assert_eq!(one[0], a[0]);
    // normalize: unit vectors.
    let n = server
        .post("/embed", json!({"inputs": joined[0], "normalize": true}))
        .json();
    let norm: f32 = f32s(&n[0]).iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");

    // OpenAI's shape.
    let r = server.post("/v1/embeddings", json!({"input": joined, "model": "elmo-tiny"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let o = r.json();
    assert_eq!(o["object"], "list");
    assert_eq!(o["model"], "elmo-tiny");
    let n_tokens: usize = tokens.iter().map(Vec::len).sum();
    assert_eq!(o["usage"]["prompt_tokens"], n_tokens);
    assert_eq!(o["usage"]["total_tokens"], n_tokens);
    for (i, item) in o["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["embedding"], a[i]);
    }

    // The mix per request through OpenAI's endpoint too.
    let (_, want) = g.f32("elmo_custom_mean");
    let o = server
        .post(
            "/v1/embeddings",
            json!({"input": tokens, "mix_weights": [0.3, -0.7, 1.1], "gamma": 0.8}),
        )
        .json();
    let got: Vec<f32> = o["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| f32s(&i["embedding"]))
        .collect();
    assert_close("openai custom", &got, &want, 2e-5, 1e-4);

    // health, info, metrics.
    let h = server.call("GET", "/health", "");
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let info = server.call("GET", "/info", "").json();
    assert_eq!(info["dim"], d);
    assert_eq!(info["n_layers"], k);
    assert_eq!(info["model"], "model");
    assert_eq!(info["limits"]["max_tokens_per_sentence"], 512);
    assert_eq!(info["options"]["lstm"]["projection_dim"], d / 2);
    let m = server.call("GET", "/metrics", "");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for needle in [
        "elmo_http_requests_total{path=\"/embed\",status=\"200\"}",
        "elmo_http_requests_total{path=\"/embed_all\",status=\"200\"}",
        "elmo_batch_sentences_bucket{le=\"+Inf\"}",
        "elmo_queue_seconds_count",
        "elmo_compute_seconds_sum",
        "elmo_tokens_total",
        "elmo_queue_length 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(server.metric("elmo_tokens_total") >= n_tokens as f64);
    // One log line per request, with its fields.
    let log = server.log_lines();
    let line = log
        .iter()
        .find(|l| l.contains("path=/v1/embeddings"))
        .expect("a log line for /v1/embeddings");
    for field in ["method=POST", "status=200", "tokens=", "queue_ms=", "compute_ms="] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[test]
fn limits_and_bad_requests_get_4xx_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let s = Server::start(
        &path,
        &[
            "--max-body-bytes",
            "400",
            "--max-inputs",
            "3",
            "--max-tokens-per-request",
            "10",
            "--max-tokens-per-sentence",
            "5",
        ],
    );
    let big = "x".repeat(500);
    let cases: Vec<(&str, &str, String, u16)> = vec![
        (
            "body over max-body-bytes",
            "/embed",
            json!({"inputs": big}).to_string(),
            413,
        ),
        (
            "4 inputs",
            "/embed",
            json!({"inputs": ["a", "b", "c", "d"]}).to_string(),
            413,
        ),
        (
            "11 tokens",
            "/embed",
            json!({"inputs": ["a b c d e", "a b c d e", "a"]}).to_string(),
            413,
        ),
        (
            "6-token sentence",
            "/embed",
            json!({"inputs": "a b c d e f"}).to_string(),
            422,
        ),
        (
            "6-token list",
            "/embed_all",
            json!({"inputs": [["a", "b", "c", "d", "e", "f"]]}).to_string(),
            422,
        ),
        ("no inputs", "/embed", json!({"inputs": []}).to_string(), 422),
        ("inputs missing", "/embed", json!({"input": "a"}).to_string(), 422),
        ("inputs a number", "/embed", json!({"inputs": 5}).to_string(), 422),
        (
            "mixed types",
            "/embed",
            json!({"inputs": ["a", ["b"]]}).to_string(),
            422,
        ),
        (
            "token not a string",
            "/embed",
            json!({"inputs": [["a", 3]]}).to_string(),
            422,
        ),
        ("malformed JSON", "/embed", "{\"inputs\": [\"a\"".into(), 400),
        ("not JSON", "/embed", "inputs=a".into(), 400),
        ("empty body", "/embed", String::new(), 400),
        (
            "unknown output",
            "/embed_all",
            json!({"inputs": "a", "output": "layers"}).to_string(),
            422,
        ),
        (
            "lstm_outputs9",
            "/embed_all",
            json!({"inputs": "a", "output": "lstm_outputs9"}).to_string(),
            422,
        ),
        (
            "mix of 2 weights",
            "/embed",
            json!({"inputs": "a", "mix_weights": [1, 2]}).to_string(),
            422,
        ),
        (
            "gamma a string",
            "/embed",
            json!({"inputs": "a", "gamma": "big"}).to_string(),
            422,
        ),
        (
            // The top layer reaches 1.5: 3.4e38 times it is no float32.
            "an output overflowing float32",
            "/embed_all",
            json!({"inputs": "a b", "output": "elmo", "mix_weights": [-50, -50, 50], "gamma": 3.4e38}).to_string(),
            422,
        ),
        (
            "a pooled output overflowing float32",
            "/embed",
            json!({"inputs": "a b", "mix_weights": [-50, -50, 50], "gamma": 3.4e38}).to_string(),
            422,
        ),
        (
            "base64 encoding",
            "/v1/embeddings",
            json!({"input": "a", "encoding_format": "base64"}).to_string(),
            422,
        ),
        (
            "wrong dimensions",
            "/v1/embeddings",
            json!({"input": "a", "dimensions": 7}).to_string(),
            422,
        ),
        (
            "openai input missing",
            "/v1/embeddings",
            json!({"model": "m"}).to_string(),
            422,
        ),
    ];
    for (what, path, body, status) in &cases {
        s.call("POST", path, body).assert_error(*status, what);
    }
    // Invalid UTF-8 in the body.
    request(&s.addr, "POST", "/embed", b"{\"inputs\": \"\xff\xfe\"}", &[]).assert_error(400, "invalid UTF-8");
    // A chunked body (no Content-Length) over the limit.
    let chunk = "x".repeat(300);
    let chunked = format!(
        "{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    request(
        &s.addr,
        "POST",
        "/embed",
        chunked.as_bytes(),
        &["Transfer-Encoding: chunked"],
    )
    .assert_error(413, "chunked body over the limit");
    s.call("GET", "/nowhere", "").assert_error(404, "unknown path");
    s.call("GET", "/embed", "").assert_error(405, "GET /embed");
    s.call("DELETE", "/health", "").assert_error(405, "DELETE /health");
    // Not HTTP at all: the connection is answered or closed, the server lives.
    let mut raw = TcpStream::connect(&s.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    assert!(
        sink.is_empty() || sink.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&sink)
    );
    // Finite values whose squares overflow float32 still normalize to a unit vector.
    let r = s.post("/embed", json!({"inputs": "a b", "gamma": 1e38, "normalize": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let norm: f64 = f32s(&r.json()[0]).iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    assert!((norm - 1.0).abs() < 1e-5, "norm^2 {norm}");
    // Errors that say what was expected.
    let r = s.post("/embed", json!({"inputs": [["a"], "b"]}));
    r.assert_error(422, "a token list beside a string");
    assert!(r.text().contains("a list of token lists"), "{}", r.text());
    let r = s.post("/embed_all", json!({"inputs": "a", "output": "bogus"}));
    r.assert_error(422, "unknown output");
    assert!(r.text().contains("top"), "{}", r.text());
    // A request at each limit is fine.
    let r = s.post("/embed", json!({"inputs": ["a b c d e", "a b c d e"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.call("GET", "/health", "").status, 200);
    let n4xx = s.metric("elmo_http_requests_total{path=\"/embed\",status=\"422\"}");
    assert!(n4xx >= 8.0, "{n4xx}");
}

#[test]
fn a_full_queue_or_too_many_requests_get_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    // The queue holds one request; the batcher waits up to 3 s for a batch to fill.
    for (flags, what) in [
        (["--queue-capacity", "1", "--max-concurrent", "100"], "queue full"),
        (
            ["--queue-capacity", "100", "--max-concurrent", "1"],
            "too many concurrent",
        ),
    ] {
        let s = Server::start(
            &path,
            &[&flags[..], &["--max-wait-ms", "3000", "--max-batch-sentences", "1000"]].concat(),
        );
        let addr = s.addr.clone();
        let first = std::thread::spawn(move || request(&addr, "POST", "/embed", br#"{"inputs": "first one"}"#, &[]));
        s.wait_metric("elmo_queue_length", 1.0);
        let r = s.post("/embed", json!({"inputs": "second"}));
        r.assert_error(429, what);
        assert_eq!(r.json()["error_type"], "Overloaded");
        assert_eq!(r.header("retry-after"), Some("1"), "{what}");
        // The request already accepted is still answered.
        let first = first.join().unwrap();
        assert_eq!(first.status, 200, "{what}: {}", first.text());
        // /health and /metrics stay answerable at the limit; later requests pass.
        assert_eq!(s.post("/embed", json!({"inputs": "third"})).status, 200);
    }
}

#[test]
fn a_client_that_disconnects_is_never_computed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let s = Server::start(&path, &["--max-wait-ms", "1500", "--max-batch-sentences", "1000"]);
    {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let body = json!({"inputs": ["gone before", "its batch"]}).to_string();
        write!(
            c,
            "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s.wait_metric("elmo_queue_length", 1.0);
    } // closed while queued
    s.wait_metric("elmo_batcher_cancelled_total", 1.0);
    s.wait_metric("elmo_http_requests_total{path=\"/embed\",status=\"499\"}", 1.0);
    assert_eq!(
        s.metric("elmo_sentences_total"),
        0.0,
        "the cancelled request was computed"
    );
    assert_eq!(s.metric("elmo_batches_total"), 0.0);
    let r = s.post("/embed", json!({"inputs": "still serving"}));
    assert_eq!(r.status, 200);
    assert_eq!(s.metric("elmo_sentences_total"), 1.0);
}

#[test]
fn clients_that_stall_hold_their_place_only_until_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let mut s = Server::start(&path, &["--max-concurrent", "2", "--read-timeout-s", "1"]);
    // Two requests whose bodies never come take both places ...
    let t0 = Instant::now();
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inp")
                .unwrap();
            c
        })
        .collect();
    // ... and a third connection sends half its headers.
    let mut half = TcpStream::connect(&s.addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    half.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.wait_metric("elmo_http_requests_in_flight", 3.0); // the two and this scrape
    s.post("/embed", json!({"inputs": "refused"}))
        .assert_error(429, "both places taken");
    // After the read timeout: 408 for the bodies, the half-sent headers'
    // connection closed, and the places free again.
    for c in stalled {
        let r = read_response(&mut BufReader::new(c)).unwrap();
        r.assert_error(408, "stalled body");
    }
    let mut rest = Vec::new();
    assert_eq!(
        half.read_to_end(&mut rest).unwrap(),
        0,
        "{}",
        String::from_utf8_lossy(&rest)
    );
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
    assert_eq!(s.post("/embed", json!({"inputs": "served"})).status, 200);
    // A connection that never sends a whole request does not hold up the
    // drain past its deadline, nor make it an error: no accepted request runs.
    let mut s2 = Server::start(&path, &["--drain-timeout-s", "1", "--read-timeout-s", "30"]);
    let mut half = TcpStream::connect(&s2.addr).unwrap();
    half.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300)); // read by the server
    let t0 = Instant::now();
    s2.sigterm();
    let status = s2.wait_exit();
    assert!(status.success(), "exit status {status:?}: {:?}", s2.log_lines());
    assert!(t0.elapsed() < Duration::from_secs(10));
    s.sigterm();
    assert!(s.wait_exit().success());
}

#[test]
fn a_client_that_went_away_does_not_count_against_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let s = Server::start(
        &path,
        &[
            "--queue-capacity",
            "2",
            "--max-wait-ms",
            "1000",
            "--max-batch-sentences",
            "1000",
        ],
    );
    {
        let body = json!({"inputs": "gone"}).to_string();
        let _gone: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut c = TcpStream::connect(&s.addr).unwrap();
                write!(
                    c,
                    "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                c
            })
            .collect();
        s.wait_metric("elmo_queue_length", 2.0);
    } // both closed while queued
    s.wait_metric("elmo_http_requests_total{path=\"/embed\",status=\"499\"}", 2.0);
    assert_eq!(s.metric("elmo_queue_length"), 0.0);
    let r = s.post("/embed", json!({"inputs": "a retry"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.metric("elmo_batcher_cancelled_total"), 2.0);
    assert_eq!(s.metric("elmo_sentences_total"), 1.0);
}

#[test]
fn sigterm_finishes_every_accepted_request_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = tiny_file(dir.path());
    let mut s = Server::start(&path, &["--max-wait-ms", "4000", "--max-batch-sentences", "1000"]);
    // 24 requests accepted and queued (the batch waits up to 4 s to fill) ...
    let n = 24;
    let queued: Vec<_> = (0..n)
        .map(|i| {
            let addr = s.addr.clone();
            std::thread::spawn(move || {
                let body = json!({"inputs": [sentences(i, 1, 8)[0].clone()]}).to_string();
                (i, request(&addr, "POST", "/embed_all", body.as_bytes(), &[]))
            })
        })
        .collect();
    // ... and 4 clients sending one request after another, keep-alive.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (s.addr.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0, 0);
                let mut other = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok + refused < 2000 {
                    match try_request(&addr, "POST", "/embed", br#"{"inputs": "load"}"#, &[]) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => other.push(r.status),
                        // Refused or closed before any answer: not accepted.
                        Err(_) => refused += 1,
                    }
                }
                (ok, refused, other)
            })
        })
        .collect();
    // All 24 and one request of each load client queued: accepted.
    s.wait_metric("elmo_queue_length", (n + 4) as f64);
    s.sigterm();
    let status = s.wait_exit();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "exit status {status:?}");
    let mix = starting_mix(&model, None, None, MixConfig::default(), false).unwrap();
    for q in queued {
        let (i, r) = q.join().unwrap();
        assert_eq!(r.status, 200, "queued request {i}: {}", r.text());
        // Complete and correct: what the library gives the request alone.
        let sent = sentences(i, 1, 8);
        let all = select_output(model.embed(&sent).unwrap(), OutputMode::All, &mix).unwrap();
        let got: Vec<f32> = r.json()[0]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| l.as_array().unwrap().iter().flat_map(f32s).collect::<Vec<_>>())
            .collect();
        assert_eq!(got, all.data(), "request {i}");
    }
    for l in load {
        let (ok, _refused, other) = l.join().unwrap();
        assert!(other.is_empty(), "answers other than 200 during the drain: {other:?}");
        assert!(ok > 0, "the load clients got no answer before the signal");
    }
    assert!(TcpStream::connect(&s.addr).is_err(), "still accepting after exit");
    let log = s.log_lines();
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
    let answered = log
        .iter()
        .filter(|l| l.contains("path=/embed_all") && l.contains("status=200"))
        .count();
    assert_eq!(answered, n as usize);
}

#[test]
fn ctrl_c_also_finishes_the_accepted_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let mut s = Server::start(&path, &["--max-wait-ms", "2000", "--max-batch-sentences", "1000"]);
    let addr = s.addr.clone();
    let queued =
        std::thread::spawn(move || request(&addr, "POST", "/embed", br#"{"inputs": "queued at Ctrl-C"}"#, &[]));
    s.wait_metric("elmo_queue_length", 1.0);
    s.signal(libc::SIGINT);
    let status = s.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let r = queued.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0].as_array().unwrap().len(), 32);
}

#[test]
fn soak_of_thousands_of_requests_keeps_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = tiny_file(dir.path());
    let s = Server::start(&path, &["--max-wait-ms", "1", "--log", "warn"]);
    let run = |per_thread: usize, seed: u64| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let addr = s.addr.clone();
                std::thread::spawn(move || {
                    let mut c = Conn::new(&addr);
                    for i in 0..per_thread {
                        let sent = sentences(seed + t * 100_000 + i as u64, 1 + i % 3, 12);
                        let (path, body) = match i % 3 {
                            0 => ("/embed", json!({"inputs": sent})),
                            1 => ("/embed_all", json!({"inputs": sent, "output": "elmo"})),
                            _ => ("/v1/embeddings", json!({"input": sent})),
                        };
                        let r = c.post(path, &body.to_string()).unwrap();
                        assert_eq!(r.status, 200, "{}", r.text());
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    };
    run(250, 0); // 1,000 requests of warm-up
    let warm = s.rss_kib();
    run(2500, 1 << 32); // 10,000 requests
    let end = s.rss_kib();
    println!("soak: RSS after 1,000 requests {warm} KiB, after 10,000 more {end} KiB");
    assert_eq!(s.metric("elmo_batcher_completed_total"), 11000.0);
    assert!(
        end < warm + 16 * 1024,
        "RSS grew from {warm} KiB to {end} KiB over 10,000 requests"
    );
}

#[test]
fn an_elmoformanylangs_model_serves_the_package_values() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("efml/words");
    let path = dir.path().join("words.safetensors");
    elmo::io::efml::convert_elmoformanylangs(&src, &path, elmo::convert::WeightDtype::F32).unwrap();
    let server = Server::start(&path, &[]);
    let mut worst = 0f32;
    for f in golden_files(&src, "golden_") {
        let g = Golden::load(&f);
        let tokens = g.tokens();
        let r = server.post("/embed_all", json!({"inputs": tokens}));
        assert_eq!(r.status, 200, "{}", r.text());
        let all = r.json();
        for (b, _) in tokens.iter().enumerate() {
            // (L + 1, n, 2P), as the package's sents2elmo(output_layer=-2).
            let (_, want) = g.f32(&format!("emb_{b}"));
            let got: Vec<f32> = all[b]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|layer| layer.as_array().unwrap().iter().flat_map(f32s).collect::<Vec<_>>())
                .collect();
            worst = worst.max(assert_close(&format!("{} {b}", g.name), &got, &want, 1e-5, 1e-4));
        }
    }
    eprintln!("efml words over HTTP: max abs error {worst:e}");
}
