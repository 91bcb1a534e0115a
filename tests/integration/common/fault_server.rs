//! A local source that misbehaves on demand: an HR export (`/export.csv`)
//! and a SCIM service provider (`/scim/Users`, paged by `startIndex` and
//! `count`, `/scim/Users/{id}`, `/scim/Groups`, `/scim/ServiceProviderConfig`)
//! over the same people, served healthy or with one [`Fault`].
//!
//! It writes HTTP/1.1 by hand on a tokio listener rather than through
//! hyper, because the faults are what a well-behaved server library never
//! sends: a body shorter than its Content-Length, a chunked body without
//! its last chunk, a body delimited only by closing the connection, a head
//! that never comes. Every answer closes its connection, so each request is
//! one connection and a fault cannot leak into the next request.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Text in every person's record that no status, Event or message may
/// quote: it stands for what a real export holds (salaries, notes).
pub const SOURCE_MARKER: &str = "s3cr3t-NOTE";

/// How the source misbehaves. `page` is a SCIM page, from 1.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Healthy.
    None,
    /// 500 for the export, or for one SCIM page, however often asked.
    ServerError { page: u64 },
    /// 429 with `Retry-After: 1`, however often asked.
    TooManyRequests { page: u64 },
    /// The request is read and never answered.
    Hang { page: u64 },
    /// The head and the first half of the body, then silence on an open
    /// connection.
    StallMidBody,
    /// The connection drops in the middle of a line (chunked CSV), or in
    /// the middle of a SCIM page's JSON (before its Content-Length).
    CutMidBody { page: u64 },
    /// A chunked CSV body that stops at a line boundary, without its last
    /// chunk: the rows read so far parse.
    CutAtLineBoundary,
    /// A CSV body without a length header or chunks, delimited by closing
    /// the connection, closed at a line boundary half-way: nothing in HTTP
    /// tells it from a shorter export.
    CutWithoutLength,
    /// 200 with an HTML page (a proxy's or a login page) instead of data.
    Html { page: u64 },
    /// A record over the provider's bound: a CSV quote never closed before
    /// 17 MiB, a SCIM user of 5 MiB on the given page.
    HugeRecord { page: u64 },
    /// SCIM: totalResults is 10 short of the truth and the listing stops
    /// there (every user is still there by `GET /Users/{id}`).
    Undercount,
    /// SCIM: an empty page at the last page's startIndex, although
    /// totalResults counts its users.
    EmptyPageEarly,
    /// SCIM: every page is the first one, without totalResults.
    IgnoresStartIndex,
    /// SCIM: the first user's `active` is this value.
    Active(Value),
}

/// One person of the source: the same people in the export and in SCIM.
#[derive(Clone, Debug)]
pub struct Person {
    pub number: usize,
    pub email: String,
}

impl Person {
    pub fn csv_id(&self) -> String {
        format!("E{:04}", self.number)
    }

    pub fn scim_id(&self) -> String {
        format!("u{:04}", self.number)
    }
}

/// `count` people; `domain` makes a new version of each (a changed e-mail).
pub fn people(count: usize, domain: &str) -> Vec<Person> {
    (1..=count).map(|number| Person { number, email: format!("person{number}@{domain}") }).collect()
}

#[derive(Debug)]
struct State {
    people: Vec<Person>,
    fault: Fault,
    /// The bearer token every request must carry (None: no check).
    token: Option<String>,
    /// Requests answered 401 for a wrong or missing token.
    unauthorized: usize,
    requests: usize,
}

pub struct FaultServer {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl FaultServer {
    pub async fn start(people: Vec<Person>, token: Option<&str>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let state = Arc::new(Mutex::new(State {
            people,
            fault: Fault::None,
            token: token.map(String::from),
            unauthorized: 0,
            requests: 0,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        FaultServer { base, state }
    }

    pub fn csv_url(&self) -> String {
        format!("{}/export.csv", self.base)
    }

    pub fn scim_url(&self) -> String {
        format!("{}/scim", self.base)
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().expect("state").fault = fault;
    }

    pub fn set_people(&self, people: Vec<Person>) {
        self.state.lock().expect("state").people = people;
    }

    pub fn requests(&self) -> usize {
        self.state.lock().expect("state").requests
    }

    /// Requests that came without the right bearer token.
    pub fn unauthorized(&self) -> usize {
        self.state.lock().expect("state").unauthorized
    }
}

/// How one answer goes on the wire.
enum Answer {
    Whole {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// Content-Length of the whole body, `sent` bytes of it, then close.
    ShortOfLength {
        body: Vec<u8>,
        sent: usize,
    },
    /// Chunked, `sent` bytes in one chunk, then close without the last chunk.
    ChunkedCut {
        body: Vec<u8>,
        sent: usize,
        content_type: &'static str,
    },
    /// No length, no chunks: `sent` bytes, then close.
    CloseDelimited {
        body: Vec<u8>,
        sent: usize,
    },
    /// Chunked, `sent` bytes, then an open, silent connection.
    Stall {
        body: Vec<u8>,
        sent: usize,
    },
    /// Nothing at all, on an open connection.
    Silence,
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let Some((target, authorization)) = read_head(&mut stream).await else { return };
    let answer = {
        let mut state = state.lock().expect("state");
        state.requests += 1;
        match &state.token {
            Some(token) if authorization.as_deref() != Some(format!("Bearer {token}").as_str()) => {
                state.unauthorized += 1;
                Answer::Whole { status: 401, headers: vec![], body: b"{\"detail\": \"no token\"}".to_vec() }
            }
            _ => answer(&state, &target),
        }
    };
    let _ = write(&mut stream, answer).await;
}

/// The request target and Authorization header of the request on `stream`.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.lines().next()?.split_whitespace().nth(1)?.to_string();
    let authorization = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("authorization").then(|| value.trim().to_string())
    });
    Some((target, authorization))
}

async fn write(stream: &mut TcpStream, answer: Answer) -> std::io::Result<()> {
    match answer {
        Answer::Whole { status, headers, body } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n", reason(status), body.len());
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("connection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Answer::ShortOfLength { body, sent } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/scim+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body[..sent]).await?;
        }
        Answer::ChunkedCut { body, sent, content_type } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(format!("{sent:x}\r\n").as_bytes()).await?;
            stream.write_all(&body[..sent]).await?;
            stream.write_all(b"\r\n").await?;
        }
        Answer::CloseDelimited { body, sent } => {
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\nconnection: close\r\n\r\n").await?;
            stream.write_all(&body[..sent]).await?;
        }
        Answer::Stall { body, sent } => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            stream.write_all(format!("{sent:x}\r\n").as_bytes()).await?;
            stream.write_all(&body[..sent]).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await?;
            // Held open and silent until the client gives up (or the test ends).
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        Answer::Silence => tokio::time::sleep(Duration::from_secs(600)).await,
    }
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

const HTML: &str = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n\
    <body><form>Sign in to continue <input name=\"session\" value=\"s3cr3t-NOTE\"></form></body></html>\n";

fn html() -> Answer {
    Answer::Whole { status: 200, headers: vec![("content-type", "text/html".into())], body: HTML.as_bytes().to_vec() }
}

fn status(status: u16) -> Answer {
    let headers = if status == 429 { vec![("retry-after", "1".to_string())] } else { vec![] };
    Answer::Whole { status, headers, body: format!("status {status}: try again later").into_bytes() }
}

fn json_answer(value: &Value) -> Answer {
    Answer::Whole {
        status: 200,
        headers: vec![("content-type", "application/scim+json".into())],
        body: value.to_string().into_bytes(),
    }
}

fn answer(state: &State, target: &str) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/export.csv" => csv_answer(state),
        "/scim/ServiceProviderConfig" => json_answer(&json!({"filter": {"supported": false}})),
        "/scim/Groups" => json_answer(&json!({"totalResults": 0, "Resources": []})),
        "/scim/Users" => users_answer(state, query),
        _ => match path.strip_prefix("/scim/Users/") {
            Some(id) => match state.people.iter().find(|p| p.scim_id() == id) {
                Some(person) => json_answer(&user(person, &state.fault, false)),
                None => Answer::Whole {
                    status: 404,
                    headers: vec![("content-type", "application/scim+json".into())],
                    body: json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "404"})
                        .to_string()
                        .into_bytes(),
                },
            },
            None => status(404),
        },
    }
}

/// The export: `employee_id,work_email,status,notes`, the notes quoted.
pub fn export(people: &[Person]) -> String {
    let mut out = String::from("employee_id,work_email,status,notes\n");
    for p in people {
        out.push_str(&format!("{},{},active,\"{SOURCE_MARKER} {}\"\n", p.csv_id(), p.email, p.number));
    }
    out
}

/// Where the first half of `body` ends at a line boundary.
fn half_at_line(body: &[u8]) -> usize {
    let half = body.len() / 2;
    body[..half].iter().rposition(|b| *b == b'\n').map_or(half, |at| at + 1)
}

fn csv_answer(state: &State) -> Answer {
    let body = export(&state.people).into_bytes();
    match &state.fault {
        Fault::ServerError { .. } => status(500),
        Fault::TooManyRequests { .. } => status(429),
        Fault::Hang { .. } => Answer::Silence,
        Fault::StallMidBody => {
            let sent = half_at_line(&body);
            Answer::Stall { body, sent }
        }
        Fault::CutMidBody { .. } => {
            // In the middle of a line: past the first half's last line break.
            let sent = half_at_line(&body) + 10;
            Answer::ChunkedCut { body, sent, content_type: "text/csv" }
        }
        Fault::CutAtLineBoundary => {
            let sent = half_at_line(&body);
            Answer::ChunkedCut { body, sent, content_type: "text/csv" }
        }
        Fault::CutWithoutLength => {
            let sent = half_at_line(&body);
            Answer::CloseDelimited { body, sent }
        }
        Fault::Html { .. } => html(),
        Fault::HugeRecord { .. } => {
            let mut body = body;
            body.extend_from_slice(b"E9999,huge@acme.example,active,\"");
            body.resize(body.len() + 17 * 1024 * 1024, b'x');
            Answer::Whole { status: 200, headers: vec![("content-type", "text/csv".into())], body }
        }
        _ => Answer::Whole { status: 200, headers: vec![("content-type", "text/csv".into())], body },
    }
}

/// A SCIM user; the first person's `active` is the fault's value, and a
/// `huge` one's title is 5 MiB.
fn user(person: &Person, fault: &Fault, huge: bool) -> Value {
    let active = match fault {
        Fault::Active(value) if person.number == 1 => value.clone(),
        _ => Value::Bool(true),
    };
    let title = if huge { "x".repeat(5 * 1024 * 1024) } else { format!("{SOURCE_MARKER} {}", person.number) };
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": person.scim_id(),
        "userName": format!("user{}", person.number),
        "emails": [{"value": person.email, "primary": true}],
        "active": active,
        "title": title,
    })
}

fn users_answer(state: &State, query: &str) -> Answer {
    let number = |name: &str| -> Option<u64> {
        query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).and_then(|v| v.parse().ok())
    };
    let count = number("count").unwrap_or(100).max(1);
    let mut start = number("startIndex").unwrap_or(1).max(1);
    let page = (start - 1) / count + 1;
    let total = state.people.len() as u64;
    let fault = &state.fault;
    match fault {
        Fault::ServerError { page: p } if *p == page => return status(500),
        Fault::TooManyRequests { page: p } if *p == page => return status(429),
        Fault::Hang { page: p } if *p == page => return Answer::Silence,
        Fault::Html { page: p } if *p == page => return html(),
        _ => {}
    }
    let (announced, listed) = match fault {
        Fault::Undercount => (Some(total - 10), total - 10),
        Fault::IgnoresStartIndex => {
            start = 1;
            (None, total)
        }
        Fault::EmptyPageEarly => (Some(total), total - count),
        _ => (Some(total), total),
    };
    let users: Vec<Value> = state
        .people
        .iter()
        .skip((start - 1) as usize)
        .take(count as usize)
        .filter(|p| (p.number as u64) <= listed)
        .enumerate()
        // One user of the page is huge: the others are ordinary.
        .map(|(at, p)| user(p, fault, at == 0 && *fault == Fault::HugeRecord { page }))
        .collect();
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "startIndex": start,
        "itemsPerPage": users.len(),
        "Resources": users,
    });
    if let Some(total) = announced {
        body["totalResults"] = json!(total);
    }
    match fault {
        Fault::CutMidBody { page: p } if *p == page => {
            let body = body.to_string().into_bytes();
            let sent = body.len() / 2;
            Answer::ShortOfLength { body, sent }
        }
        _ => json_answer(&body),
    }
}
