//! A kube client whose Lease writes a test can make fail, as an overloaded
//! or unreachable API server would, while every other request goes through:
//! how the tests show what a Lease holder does when its renewals fail.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;

#[derive(Debug, Default)]
struct State {
    /// Fail this many of the next matching writes.
    fail_next: usize,
    /// Fail every matching write while set.
    fail_all: bool,
    failed: usize,
    /// Matching writes that went through after the first failure.
    passed_after_failure: usize,
}

/// Controls the failures of one client's writes (PUT) to the Leases whose
/// names start with a prefix.
#[derive(Clone)]
pub struct LeaseFaults {
    state: Arc<Mutex<State>>,
}

impl LeaseFaults {
    /// A client to `cluster` whose writes to Leases named `prefix…` fail on demand.
    pub fn client(cluster: &idsync_devcluster::DevCluster, prefix: &str) -> (kube::Client, LeaseFaults) {
        let inner = cluster.client().expect("client");
        let faults = LeaseFaults { state: Arc::new(Mutex::new(State::default())) };
        let state = faults.state.clone();
        let marker = format!("/leases/{prefix}");
        let service = tower::service_fn(move |request: Request<Body>| {
            let inner = inner.clone();
            let fail = request.method() == Method::PUT
                && request.uri().path().contains(&marker)
                && state.lock().map(|mut s| s.decide()).unwrap_or(false);
            async move {
                if fail {
                    return Ok(unavailable());
                }
                inner.send(request).await
            }
        });
        (kube::Client::new(service, "default"), faults)
    }

    pub fn fail_next(&self, writes: usize) {
        self.state.lock().expect("faults").fail_next = writes;
    }

    pub fn fail_all(&self, on: bool) {
        self.state.lock().expect("faults").fail_all = on;
    }

    /// Writes failed so far.
    pub fn failed(&self) -> usize {
        self.state.lock().expect("faults").failed
    }

    /// Writes that went through after the first failure.
    pub fn passed_after_failure(&self) -> usize {
        self.state.lock().expect("faults").passed_after_failure
    }
}

impl State {
    fn decide(&mut self) -> bool {
        let fail = self.fail_all || self.fail_next > 0;
        if fail {
            self.fail_next = self.fail_next.saturating_sub(1);
            self.failed += 1;
        } else if self.failed > 0 {
            self.passed_after_failure += 1;
        }
        fail
    }
}

/// What an API server that cannot serve the request answers.
fn unavailable() -> Response<Body> {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "injected by the test", "reason": "ServiceUnavailable", "code": 503});
    let mut response = Response::new(Body::from(serde_json::to_vec(&status).expect("json")));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}
