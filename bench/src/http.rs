//! The few HTTP requests the bench makes (register, `/ready`), as plain HTTP/1.1 over one
//! keep-alive connection per provisioning worker.
//!
//! A full client would be a large dependency for two endpoints that answer small JSON bodies.
//! Keeping connections alive matters: provisioning 10,000 users over fresh connections would
//! leave 10,000 sockets in TIME_WAIT on the same port pair space the WebSocket clients need.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// One answer: status, `Retry-After` if any, and the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

/// A keep-alive HTTP/1.1 connection to one node, reopened when the server closes it.
pub struct HttpConn {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpConn {
    pub fn new(addr: &str) -> Self {
        Self { addr: addr.to_owned(), conn: None }
    }

    /// Sends a request and reads the answer; retries once on a fresh connection if a kept-alive
    /// one turns out to be closed.
    pub async fn request(&mut self, method: &str, path: &str, json: Option<&str>) -> anyhow::Result<Response> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, json).await {
            Ok(resp) => Ok(resp),
            Err(_) if reused => {
                self.conn = None;
                self.try_request(method, path, json).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_request(&mut self, method: &str, path: &str, json: Option<&str>) -> anyhow::Result<Response> {
        if self.conn.is_none() {
            let stream =
                TcpStream::connect(&self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected just above");
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(body) = json {
            let _ = write!(request, "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        } else {
            request.push_str("\r\n");
        }
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            conn.get_mut().write_all(request.as_bytes()).await?;
            read_response(conn).await
        })
        .await;
        match result {
            Ok(Ok((resp, keep_alive))) => {
                if !keep_alive {
                    self.conn = None;
                }
                Ok(resp)
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                bail!("{method} {path}: no answer from {} within 30 s", self.addr)
            }
        }
    }
}

async fn read_response(conn: &mut BufReader<TcpStream>) -> anyhow::Result<(Response, bool)> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        bail!("connection closed before the response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line {line:?}"))?;
    let (mut length, mut chunked, mut keep_alive, mut retry_after) = (None, false, true, None);
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed in the response headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            "retry-after" => retry_after = value.parse().ok(),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or_default(), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            let at = body.len();
            body.resize(at + size + 2, 0); // the chunk and its CRLF
            conn.read_exact(&mut body[at..]).await?;
            body.truncate(at + size);
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = length {
        body.resize(len, 0);
        conn.read_exact(&mut body).await?;
    } else {
        conn.read_to_end(&mut body).await?;
        keep_alive = false;
    }
    Ok((Response { status, retry_after, body: String::from_utf8_lossy(&body).into_owned() }, keep_alive))
}
