//! A tiny server for the mesh's upgrade test: on 0.0.0.0:$PORT, a request
//! with `Upgrade:` gets `101 Switching Protocols` and then every byte
//! echoed back (as a WebSocket connection would carry frames); `GET
//! /headers` gets its own request head back; any other request gets `200
//! plain`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn serve(mut s: TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            return;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.contains("\r\nupgrade:") {
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        );
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    } else if text.starts_with("get /headers ") {
        // The request head as the server got it (what the mesh forwards).
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                head.len()
            )
            .as_bytes(),
        );
        let _ = s.write_all(&head);
    } else {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nplain\n");
    }
}

fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
    println!("upgrade echo server on {port}");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || serve(s));
    }
}
