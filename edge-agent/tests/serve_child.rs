//! `edge-agent serve-child` as the agent runs it: a separate process, released by a go line,
//! controlled by JSON lines on stdin and reporting JSON lines on stdout.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdout, Command, Stdio};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("serve-child")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting edge-agent serve-child")
}

fn next_json(out: &mut BufReader<ChildStdout>) -> Option<serde_json::Value> {
    let mut line = String::new();
    match out.read_line(&mut line).expect("reading stdout") {
        0 => None,
        _ => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("`{line}`: {e}"))),
    }
}

/// `GET path` over plain HTTP/1.1; the status code.
fn get_status(addr: &str, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line")
}

#[test]
fn a_bad_line_is_reported_and_shutdown_ends_the_process() {
    let mut child = spawn(&["--listen", "127.0.0.1:0", "--wait-go", "--window-ms", "60000"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "go").unwrap();
    let listening = next_json(&mut out).expect("a listening line");
    let addr = listening["listening"]["addr"].as_str().expect("an address").to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    writeln!(stdin, "{{\"activate\": ").unwrap();
    let error = next_json(&mut out).expect("an error line");
    let message = error["error"]["message"].as_str().expect("an error event");
    assert!(message.contains("malformed command"), "{message}");
    // Still serving, with no model yet.
    assert_eq!(get_status(&addr, "/v2/health/live"), 200);
    assert_eq!(get_status(&addr, "/v2/health/ready"), 503);
    writeln!(stdin, "{{\"shutdown\": {{}}}}").unwrap();
    let mut last = None;
    while let Some(v) = next_json(&mut out) {
        last = Some(v);
    }
    let last = last.expect("a last window");
    assert_eq!(last["window"]["window"]["requests"], 0, "{last}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_end_of_stdin_ends_the_process() {
    let mut child = spawn(&["--listen", "127.0.0.1:0"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    assert!(next_json(&mut out).expect("a listening line").get("listening").is_some());
    drop(child.stdin.take());
    while next_json(&mut out).is_some() {}
    assert!(child.wait().unwrap().success());
}

#[test]
fn listening_off_loopback_without_a_token_is_refused() {
    let child = spawn(&["--listen", "0.0.0.0:0"]);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(output.stdout.is_empty());
}
