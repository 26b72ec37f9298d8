//! A minimal blocking HTTP/1.1 client over a `TcpStream` (one request per connection, or keep-alive), used by the
//! demo, the network load generator and the tests. It sends exactly the bytes it is given, so tests can send
//! malformed requests, and reads one response (`Content-Length` or chunked).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// A response.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` if it is not JSON).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Formats a request with optional bearer token and JSON body.
#[must_use]
pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: aerodb\r\nConnection: {}\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match body {
        Some(b) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => req.push_str("\r\n"),
    }
    req.into_bytes()
}

/// Sends `raw` on `stream` and reads one response.
pub fn exchange(stream: &mut TcpStream, raw: &[u8]) -> std::io::Result<Response> {
    stream.write_all(raw)?;
    read_response(stream)
}

/// One request on a fresh connection.
pub fn send(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, raw)
}

/// A well-formed request on a fresh connection.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Response> {
    send(addr, &request(method, path, token, body, false))
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 << 10 {
            return Err(invalid("response head over 64 KiB"));
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(invalid("connection closed before a response"));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut body = buf[header_end..].to_vec();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if len > 64 << 20 {
            return Err(invalid("response body over 64 MiB"));
        }
        while body.len() < len {
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(invalid("short body"));
            }
            body.extend_from_slice(&tmp[..n]);
        }
        body.truncate(len);
    } else if head.contains("transfer-encoding: chunked") {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&tmp[..n]);
        }
        body = dechunk(&body);
    }
    Ok(Response { status, body })
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = b[i..].windows(2).position(|w| w == b"\r\n") {
        let len = std::str::from_utf8(&b[i..i + p])
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(0);
        i += p + 2;
        if len == 0 || i + len > b.len() {
            break;
        }
        out.extend_from_slice(&b[i..i + len]);
        i += len + 2;
    }
    out
}
