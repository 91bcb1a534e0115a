//! A real SMTP server to mail to: `aiosmtpd` from PyPI (installed by
//! `scripts/test` under `~/.cache/idsync-tools/aiosmtpd-venv`), with a
//! handler that writes each message it accepts, decoded by Python's own
//! `email` package, as a JSON file in a folder the test reads.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use crate::common::{eventually, tool};

/// The handler aiosmtpd loads (`-c save_handler.Save DIR`).
const HANDLER: &str = r#"
import email, email.policy, json, os, uuid

class Save:
    def __init__(self, directory):
        self.directory = directory

    @classmethod
    def from_cli(cls, parser, directory):
        return cls(directory)

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(message["Subject"]),
            "messageId": str(message["Message-ID"]),
            "body": message.get_content(),
        }
        name = os.path.join(self.directory, uuid.uuid4().hex)
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name + ".json")
        return "250 OK"
"#;

/// One mail the sink accepted.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub message_id: String,
    pub body: String,
}

pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl SmtpSink {
    /// A sink on a free port of 127.0.0.1, once it accepts connections.
    pub async fn start() -> SmtpSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        Self::start_on(port).await
    }

    /// A sink on `port` (a port a test chose before it was listening).
    pub async fn start_on(port: u16) -> SmtpSink {
        let dir = tempfile::tempdir().expect("sink dir");
        std::fs::write(dir.path().join("save_handler.py"), HANDLER).expect("handler");
        let mails = dir.path().join("mails");
        std::fs::create_dir(&mails).expect("mails dir");
        let child = tokio::process::Command::new(tool("aiosmtpd-venv/bin/python"))
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "save_handler.Save"])
            .arg(&mails)
            .env("PYTHONPATH", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("aiosmtpd starts");
        let up = eventually(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
        assert!(up.is_some(), "aiosmtpd did not listen on {port}");
        SmtpSink { port, dir, child: Some(child) }
    }

    fn folder(&self) -> PathBuf {
        self.dir.path().join("mails")
    }

    /// Every mail received so far, in no particular order.
    pub fn mails(&self) -> Vec<Mail> {
        let mut mails = Vec::new();
        for entry in std::fs::read_dir(self.folder()).expect("mails dir").flatten() {
            if entry.path().extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(entry.path()).expect("mail");
                mails.push(serde_json::from_str(&text).expect("a mail record"));
            }
        }
        mails
    }

    /// Waits until `count` mails matching `matches` have arrived; returns them.
    pub async fn wait_for(&self, count: usize, timeout: Duration, matches: impl Fn(&Mail) -> bool) -> Vec<Mail> {
        let found = eventually(timeout, || async {
            let mails: Vec<Mail> = self.mails().into_iter().filter(&matches).collect();
            (mails.len() >= count).then_some(mails)
        })
        .await;
        found.unwrap_or_else(|| panic!("{count} mail(s) did not arrive; the sink has: {:#?}", self.mails()))
    }

    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
