//! A fake CubeFS master cluster for tests, built from `shared/docs/cubefs-master-api.md`
//! (section 12): byte-faithful envelopes, the volume states of a real master, scriptable fault
//! modes per address, several masters sharing one state, and a request log.
//!
//! It is a plain HTTP/1.1 server over tokio sockets (keep-alive included), so that every byte
//! of every answer is under the test's control: truncated bodies, black holes, refused ports.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The healthy `/admin/getVol` body of the reference (section 10), with placeholders.
const VOL_TEMPLATE: &str = r#"{"ID":@ID@,"Name":"@NAME@","Owner":"@OWNER@","ZoneName":"default","DpReplicaNum":1,"MpReplicaNum":1,"InodeCount":0,"DentryCount":0,"MaxMetaPartitionID":3,"MaxDataPartitionID":0,"Status":@STATUS@,"Capacity":10,"RwDpCnt":3,"RwDpOfSSDCnt":3,"RwDpOfHDDCnt":0,"MpCnt":3,"DpCnt":3,"DpOfSSDCnt":3,"DpOfHDDCnt":0,"FollowerRead":true,"MetaFollowerRead":false,"DirectRead":false,"IgnoreTinyRecover":false,"MaximallyRead":false,"NeedToLowerReplica":false,"Authenticate":false,"CrossZone":false,"DefaultPriority":false,"DomainOn":false,"CreateTime":"2026-11-24 23:37:31","DeleteLockTime":0,"LeaderRetryTimeOut":0,"EnableToken":false,"EnablePosixAcl":false,"EnableQuota":false,"EnableTransactionV1":"rename","EnableTransaction":"off","TxTimeout":1,"TxConflictRetryNum":121,"TxConflictRetryInterval":500,"TxOpLimit":0,"Description":"","DpSelectorName":"","DpSelectorParm":"","DefaultZonePrior":false,"DpReadOnlyWhenVolFull":false,"LeaderRetryTimeout":0,"VolType":0,"ObjBlockSize":0,"Uids":null,"TrashInterval":0,"LatestVer":0,"Forbidden":@FORBIDDEN@,"DisableAuditLog":false,"DeleteExecTime":"@EXEC@","DpRepairBlockSize":131072,"EnableAutoDpMetaRepair":false,"AccessTimeInterval":86400,"EnablePersistAccessTime":false,"VolStorageClass":1,"AllowedStorageClass":[1],"ForbidWriteOpOfProtoVer0":true,"QuotaOfStorageClass":[{"StorageClass":1,"InodeCount":0,"UsedSizeBytes":0,"QuotaGB":0}],"RemoteCacheEnable":false,"RemoteCachePath":"","RemoteCacheAutoPrepare":false,"RemoteCacheTTL":432000,"RemoteCacheReadTimeout":5,"RemoteCacheMaxFileSizeGB":128,"RemoteCacheOnlyForNotSSD":false,"RemoteCacheMultiRead":false,"FlashNodeTimeoutCount":5,"RemoteCacheSameZoneTimeout":400,"RemoteCacheSameRegionTimeout":100,"QosInfo":{"QosItems":[{"Name":"FlowRead","Type":3,"Total":34359738368,"CliUsed":0},{"Name":"FlowWrite","Type":4,"Total":34359738368,"CliUsed":0}],"QosEnable":false},"RemoteCacheRemoveDupReq":false}"#;

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A volume's state on the master.
#[derive(Clone, Debug, PartialEq)]
pub enum VolState {
    /// Normal.
    Normal,
    /// `Forbidden` set with `Status 0`: read-only.
    ReadOnly,
    /// Direct-mode mark-delete: `Status 1`, not forbidden.
    MarkedDirect,
    /// Delayed mode: `Status 1`, forbidden, deletion due at the given time.
    PendingDelayed(SystemTime),
    /// Removed: code 7.
    Gone,
}

#[derive(Clone, Debug)]
struct Vol {
    id: u64,
    owner: String,
    state: VolState,
}

/// What a master does with the next request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer like a real master.
    None,
    /// Connections refused (the listener is closed; open connections are dropped).
    Refuse,
    /// Accept and never answer.
    BlackHole,
    /// Answer normally after a delay.
    Slow(Duration),
    /// `400 no leader`.
    NoLeader,
    /// `400 <leader address>`: leader elected, metadata not loaded.
    LeaderNotReady,
    /// `429` with the limiter text.
    RateLimited,
    /// `502` with an empty body.
    BadGateway,
    /// HTTP 200 with this code and message.
    Code(i64, String),
    /// HTTP 200 with these bytes as the body.
    Raw(Vec<u8>),
    /// HTTP 200 whose body stops half-way (Content-Length says more), then the connection closes.
    Truncated,
    /// An HTTP status with an empty body.
    Status(u16),
}

/// Numbering of the codes that moved between CubeFS versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// v3.3.2 and later: no leader 33, auth key 34.
    New,
    /// v3.3.0 and earlier: no leader 31, auth key 32.
    Old,
}

/// One logged request.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Which master (index) got it.
    pub master: usize,
    /// Method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Headers, lower-cased names.
    pub headers: Vec<(String, String)>,
}

struct State {
    vols: HashMap<String, Vol>,
    next_id: u64,
    direct_delete: bool,
    delay: Duration,
    /// Offset added to the real clock (advance without sleeping).
    clock_offset: Duration,
    cluster: String,
    leader: usize,
    electing: bool,
    profile: Profile,
    log: Vec<Logged>,
    faults: Vec<VecDeque<Fault>>,
    sticky: Vec<Fault>,
    addrs: Vec<SocketAddr>,
    /// `/client/vol` serves a cached status refreshed this often (the real leader: 5 s).
    client_vol_lag: Duration,
    client_vol_cache: HashMap<String, (std::time::Instant, u8)>,
}

impl State {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.clock_offset
    }

    /// Apply the passage of time: direct mark-deletes become gone, expired delays become gone.
    fn settle(&mut self) {
        let now = self.now();
        for v in self.vols.values_mut() {
            match v.state {
                VolState::PendingDelayed(at) if at <= now => v.state = VolState::Gone,
                _ => {}
            }
        }
    }
}

/// A fake cluster of `n` masters sharing one state.
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Per master: how to stop its listener.
    stops: Vec<Mutex<Option<Listener>>>,
}

/// The token that stops a master's listener, and the listener's task.
type Listener = (CancellationToken, tokio::task::JoinHandle<()>);

impl FakeCluster {
    /// Start `n` masters on loopback; master 0 is the leader.
    pub fn start(n: usize) -> FakeCluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let state = Arc::new(Mutex::new(State {
            vols: HashMap::new(),
            next_id: 4,
            direct_delete: true,
            delay: Duration::from_secs(48 * 3600),
            clock_offset: Duration::ZERO,
            cluster: "cfs_test".into(),
            leader: 0,
            electing: false,
            profile: Profile::New,
            log: Vec::new(),
            faults: vec![VecDeque::new(); n],
            sticky: vec![Fault::None; n],
            addrs: Vec::new(),
            client_vol_lag: Duration::from_secs(5),
            client_vol_cache: HashMap::new(),
        }));
        let cluster = FakeCluster {
            state,
            runtime: Some(runtime),
            stops: (0..n).map(|_| Mutex::new(None)).collect(),
        };
        for i in 0..n {
            let listener = cluster
                .rt()
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            cluster.state.lock().addrs.push(addr);
            cluster.serve(i, listener);
        }
        cluster
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime")
    }

    fn serve(&self, index: usize, listener: TcpListener) {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let state = self.state.clone();
        let task = self.rt().spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let state = state.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection(index, sock, state, &stop) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        *self.stops[index].lock() = Some((token, task));
    }

    /// `host:port` of every master.
    pub fn addrs(&self) -> Vec<String> {
        self.state
            .lock()
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// Create a volume owned by `cfsuser`.
    pub fn create(&self, name: &str) {
        let mut s = self.state.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.vols.insert(
            name.into(),
            Vol {
                id,
                owner: "cfsuser".into(),
                state: VolState::Normal,
            },
        );
    }

    /// Set a volume's state directly.
    pub fn set(&self, name: &str, state: VolState) {
        if let Some(v) = self.state.lock().vols.get_mut(name) {
            v.state = state;
        }
    }

    /// A volume's state.
    pub fn get(&self, name: &str) -> Option<VolState> {
        let mut s = self.state.lock();
        s.settle();
        s.vols.get(name).map(|v| v.state.clone())
    }

    /// Direct (`true`) or delayed deletion mode, and the delay of the latter.
    pub fn set_delete_mode(&self, direct: bool, delay: Duration) {
        let mut s = self.state.lock();
        s.direct_delete = direct;
        s.delay = delay;
    }

    /// Advance the master's clock without sleeping.
    pub fn advance(&self, by: Duration) {
        self.state.lock().clock_offset += by;
    }

    /// The master's clock.
    pub fn now(&self) -> SystemTime {
        self.state.lock().now()
    }

    /// Which master leads; followers proxy to it.
    pub fn set_leader(&self, index: usize) {
        self.state.lock().leader = index;
    }

    /// While electing, every master answers `400 no leader`.
    pub fn set_electing(&self, electing: bool) {
        self.state.lock().electing = electing;
    }

    /// How stale `/client/vol` may be.
    pub fn set_client_vol_lag(&self, lag: Duration) {
        self.state.lock().client_vol_lag = lag;
    }

    /// Code numbering.
    pub fn set_profile(&self, p: Profile) {
        self.state.lock().profile = p;
    }

    /// The cluster name `/admin/getIp` reports.
    pub fn set_cluster_name(&self, name: &str) {
        self.state.lock().cluster = name.into();
    }

    /// Fault for every request to `master` from now on (`Fault::None` clears it). `Refuse`
    /// closes the listener; clearing it opens the same port again.
    pub fn fault(&self, master: usize, fault: Fault) {
        let was_refusing = {
            let mut s = self.state.lock();
            let was = s.sticky[master] == Fault::Refuse;
            s.sticky[master] = fault.clone();
            was
        };
        if fault == Fault::Refuse {
            let stop = self.stops[master].lock().take();
            if let Some((token, task)) = stop {
                token.cancel();
                // Only once the listener is gone are connections really refused.
                let _ = self.rt().block_on(task);
            }
        } else if was_refusing {
            let addr = self.state.lock().addrs[master];
            let listener = self.rt().block_on(async {
                // The port was just released; retry briefly if the kernel still holds it.
                for _ in 0..100 {
                    if let Ok(l) = TcpListener::bind(addr).await {
                        return Some(l);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            });
            if let Some(l) = listener {
                self.serve(master, l);
            }
        }
    }

    /// Faults for the next requests to `master`, one each, before the sticky fault applies.
    pub fn script(&self, master: usize, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults[master].extend(faults);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().log.clone()
    }

    /// Forget the request log.
    pub fn clear_log(&self) {
        self.state.lock().log.clear();
    }

    /// Simulate the observed startup: refused, then `no_leader_for` of `400 no leader`, then
    /// normal answers. Blocks until done.
    pub fn restart(&self, down_for: Duration, no_leader_for: Duration) {
        let n = self.stops.len();
        for i in 0..n {
            self.fault(i, Fault::Refuse);
        }
        std::thread::sleep(down_for);
        self.set_electing(true);
        for i in 0..n {
            self.fault(i, Fault::None);
        }
        std::thread::sleep(no_leader_for);
        self.set_electing(false);
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for s in &self.stops {
            if let Some((token, _)) = s.lock().take() {
                token.cancel();
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| v.to_string())
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_string();
            let target = first.next()?.to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let body_len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + body_len;
            while buf.len() < total {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), q.to_string()),
                None => (target, String::new()),
            };
            return Some(Request {
                method,
                path,
                query,
                headers,
            });
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn response(status: u16, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    if let Some(ct) = content_type {
        out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    if content_type == Some("text/plain; charset=utf-8") {
        out.extend_from_slice(b"X-Content-Type-Options: nosniff\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn envelope(code: i64, msg: &str, data: &str) -> Vec<u8> {
    let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".into());
    response(
        200,
        Some("application/json"),
        format!("{{\"code\":{code},\"msg\":{msg},\"data\":{data}}}").as_bytes(),
    )
}

fn text(status: u16, body: &str) -> Vec<u8> {
    response(status, Some("text/plain; charset=utf-8"), body.as_bytes())
}

fn vol_json(name: &str, v: &Vol) -> String {
    let (status, forbidden, exec) = match &v.state {
        VolState::Normal | VolState::Gone => (0, false, ZERO_TIME.to_string()),
        VolState::ReadOnly => (0, true, ZERO_TIME.to_string()),
        VolState::MarkedDirect => (1, false, ZERO_TIME.to_string()),
        VolState::PendingDelayed(at) => (1, true, rfc3339_nanos(*at)),
    };
    VOL_TEMPLATE
        .replace("@ID@", &v.id.to_string())
        .replace("@NAME@", name)
        .replace("@OWNER@", &v.owner)
        .replace("@STATUS@", &status.to_string())
        .replace("@FORBIDDEN@", if forbidden { "true" } else { "false" })
        .replace("@EXEC@", &exec)
}

fn rfc3339_nanos(t: SystemTime) -> String {
    // humantime prints seconds precision with `format_rfc3339`; nanos with `_nanos`.
    humantime::format_rfc3339_nanos(t).to_string()
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn connection(
    index: usize,
    mut sock: TcpStream,
    state: Arc<Mutex<State>>,
    stop: &CancellationToken,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        if stop.is_cancelled() {
            // The master went down: a kept-alive connection is reset, not answered.
            return;
        }
        let fault = {
            let mut s = state.lock();
            s.log.push(Logged {
                master: index,
                method: req.method.clone(),
                path: req.path.clone(),
                query: req.query.clone(),
                headers: req.headers.clone(),
            });
            match s.faults[index].pop_front() {
                Some(f) => f,
                None => s.sticky[index].clone(),
            }
        };
        let answer = match fault {
            Fault::None | Fault::Refuse => handle(index, &req, &state),
            Fault::BlackHole => {
                // Hold the connection open forever (until the test drops the cluster).
                std::future::pending::<()>().await;
                return;
            }
            Fault::Slow(d) => {
                tokio::time::sleep(d).await;
                handle(index, &req, &state)
            }
            Fault::NoLeader => text(400, "no leader\n"),
            Fault::LeaderNotReady => {
                let leader = state.lock().addrs[0];
                text(400, &format!("{leader}\n"))
            }
            Fault::RateLimited => text(429, &format!("too many requests for api: {}\n", req.path)),
            Fault::BadGateway => response(502, None, b""),
            Fault::Code(code, msg) => envelope(code, &msg, "null"),
            Fault::Raw(body) => response(200, Some("application/json"), &body),
            Fault::Truncated => {
                let full = handle(index, &req, &state);
                let cut = full.len() - (full.len() - header_len(&full)) / 2;
                let _ = sock.write_all(&full[..cut]).await;
                return;
            }
            Fault::Status(code) => response(code, None, b""),
        };
        if sock.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn header_len(resp: &[u8]) -> usize {
    resp.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(0)
}

/// A real master's answer to `req`.
fn handle(index: usize, req: &Request, state: &Arc<Mutex<State>>) -> Vec<u8> {
    let mut s = state.lock();
    s.settle();
    if s.electing {
        return text(400, "no leader\n");
    }
    // `/admin/getIp` is answered locally by any master.
    if req.path == "/admin/getIp" && req.method == "GET" {
        let data = format!(
            "{{\"Cluster\":\"{}\",\"Ip\":\"127.0.0.1\",\"EbsAddr\":\"\",\"ServicePath\":\"\"}}",
            s.cluster
        );
        return envelope(0, "success", &data);
    }
    // Followers proxy to the leader: 502 when it cannot be reached.
    if index != s.leader {
        let leader = s.leader;
        let leader_down = matches!(s.sticky[leader], Fault::Refuse | Fault::BlackHole);
        if leader_down {
            return response(502, None, b"");
        }
    }
    let auth_code = if s.profile == Profile::New { 34 } else { 32 };
    let name = req.param("name");
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/admin/getVol") => {
            let Some(name) = name else {
                return envelope(2, "[operate_util.go 225] parameter name not found", "null");
            };
            match s.vols.get(&name) {
                Some(v) if v.state != VolState::Gone => {
                    let data = vol_json(&name, v);
                    envelope(0, "success", &data)
                }
                _ => envelope(7, "vol not exists", "null"),
            }
        }
        (_, "/admin/getVol") => response(405, None, b""),
        ("GET" | "POST", "/client/vol") => {
            let Some(name) = name else {
                return envelope(2, "[operate_util.go 225] parameter name not found", "null");
            };
            let Some(v) = s.vols.get(&name).filter(|v| v.state != VolState::Gone) else {
                return envelope(7, "vol not exists", "null");
            };
            let skip = req.header("skip-owner-validation") == Some("true");
            let key_ok = req
                .param("authKey")
                .is_some_and(|k| k.eq_ignore_ascii_case(&md5_hex(&v.owner)));
            if !skip && !key_ok {
                return envelope(auth_code, "client and server auth key do not match", "null");
            }
            // Like the real leader's view cache, this answer lags behind the volume's state.
            let owner = v.owner.clone();
            let live = matches!(
                v.state,
                VolState::MarkedDirect | VolState::PendingDelayed(_)
            ) as u8;
            let lag = s.client_vol_lag;
            let now = std::time::Instant::now();
            let entry = s
                .client_vol_cache
                .entry(name.clone())
                .or_insert((now, live));
            if now.duration_since(entry.0) >= lag {
                *entry = (now, live);
            }
            let status = entry.1;
            let data = format!(
                "{{\"Name\":\"{name}\",\"Owner\":\"{owner}\",\"Status\":{status},\"FollowerRead\":true,\"MetaPartitions\":[],\"DataPartitions\":[],\"DomainOn\":false,\"OSSSecure\":{{\"AccessKey\":\"ak\",\"SecretKey\":\"sk\"}},\"CreateTime\":1795563451,\"DeleteLockTime\":0,\"VolType\":0}}"
            );
            envelope(0, "success", &data)
        }
        ("GET" | "POST", "/vol/delete") => {
            let (Some(name), Some(key)) = (name, req.param("authKey")) else {
                return envelope(2, "[operate_util.go 225] parameter name not found", "null");
            };
            let undelete = req.param("delete").as_deref() == Some("false");
            let (direct, delay, now) = (s.direct_delete, s.delay, s.now());
            let Some(v) = s.vols.get_mut(&name).filter(|v| v.state != VolState::Gone) else {
                return envelope(7, "vol not exists", "null");
            };
            if !key.eq_ignore_ascii_case(&md5_hex(&v.owner)) {
                return envelope(auth_code, "client and server auth key do not match", "null");
            }
            if undelete {
                return match v.state {
                    VolState::PendingDelayed(_) => {
                        v.state = VolState::Normal;
                        envelope(
                            0,
                            "success",
                            &format!("\"undelete vol[{name}] successfully\""),
                        )
                    }
                    _ => envelope(
                        9,
                        "vol was not previously deleted or already deleted",
                        "null",
                    ),
                };
            }
            match v.state {
                VolState::PendingDelayed(_) => envelope(
                    8,
                    "vol has been mark delete, repeated deletions are not allowed",
                    "null",
                ),
                _ if direct => {
                    v.state = VolState::MarkedDirect;
                    envelope(
                        0,
                        "success",
                        &format!("\"delete vol[{name}] successfully,from[127.0.0.1:1]\""),
                    )
                }
                _ => {
                    v.state = VolState::PendingDelayed(now + delay);
                    envelope(
                        0,
                        "success",
                        &format!(
                            "\"delete vol: forbid vol[{name}] successfully,from[127.0.0.1:1]\""
                        ),
                    )
                }
            }
        }
        ("GET", "/admin/getCluster") => {
            let leader = s.addrs[s.leader];
            let data = format!(
                "{{\"Name\":\"{}\",\"LeaderAddr\":\"{leader}\",\"VolDeletionDelayTimeHour\":{}}}",
                s.cluster,
                s.delay.as_secs() / 3600
            );
            envelope(0, "success", &data)
        }
        ("GET", "/vol/list") => {
            let items: Vec<String> = s
                .vols
                .iter()
                .filter(|(_, v)| v.state != VolState::Gone)
                .map(|(n, v)| {
                    let status = matches!(
                        v.state,
                        VolState::MarkedDirect | VolState::PendingDelayed(_)
                    ) as u8;
                    format!(
                        "{{\"Name\":\"{n}\",\"Owner\":\"{}\",\"Status\":{status}}}",
                        v.owner
                    )
                })
                .collect();
            envelope(0, "success", &format!("[{}]", items.join(",")))
        }
        ("GET", "/client/volStat") => match name.and_then(|n| s.vols.get(&n).cloned()) {
            Some(v) if v.state != VolState::Gone => envelope(
                0,
                "success",
                "{\"Name\":\"vol\",\"TotalSize\":10737418240,\"UsedSize\":0,\"UsedRatio\":\"0.00\",\"CacheTotalSize\":0,\"CacheUsedSize\":0,\"CacheUsedRatio\":\"0.00\",\"EnableToken\":false,\"InodeCount\":1,\"TxCnt\":0,\"TxRbInoCnt\":0,\"TxRbDenCnt\":0}",
            ),
            _ => envelope(7, "vol not exists", "null"),
        },
        _ => text(404, "404 page not found\n"),
    }
}
