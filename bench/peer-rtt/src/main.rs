//! One gRPC round trip on loopback, three ways (see Cargo.toml). With no arguments it starts
//! its own server process and runs every mode against it:
//!
//!   peer-rtt [--bytes N] [--count N]      a server child process, then each mode
//!   peer-rtt serve ADDR                   the server alone
//!   peer-rtt client ADDR MODE BYTES COUNT one mode against ADDR
//!
//! MODE is `direct` (unary, the client library's transport), `channel` (unary, tonic's
//! `Channel`) or `stream` (one long-lived bidirectional stream, one message in flight).

use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

mod pb {
    tonic::include_proto!("peerrtt");
}
use pb::rtt_client::RttClient;
use pb::rtt_server::{Rtt, RttServer};
use pb::Msg;

const WARMUP: usize = 500;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => runtime().block_on(serve(arg(&args, 1))),
        Some("client") => {
            let bytes = arg(&args, 3).parse().expect("BYTES");
            let count = arg(&args, 4).parse().expect("COUNT");
            runtime().block_on(client(arg(&args, 1), arg(&args, 2), bytes, count))
        }
        _ => all(&args),
    };
    if let Err(e) = result {
        eprintln!("peer-rtt: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], i: usize) -> String {
    args.get(i).cloned().unwrap_or_else(|| {
        eprintln!("peer-rtt: missing argument {i}; see the source's header");
        std::process::exit(2)
    })
}

/// Two workers, as a node has on a 2-core machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn all(args: &[String]) -> Result<(), Error> {
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let bytes = flag("--bytes", 8192);
    let count = flag("--count", 20_000);
    let addr = "127.0.0.1:47911";
    let me = std::env::current_exe()?;
    let mut server = Command::new(&me)
        .args(["serve", addr])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let mut result = Ok(());
    // Alternated, so drift on a shared host hits every mode alike.
    for round in 1..=3 {
        for mode in ["direct", "channel", "stream"] {
            let status = Command::new(&me)
                .args(["client", addr, mode, &bytes.to_string(), &count.to_string()])
                .env("PEER_RTT_ROUND", round.to_string())
                .status()?;
            if !status.success() {
                result = Err(format!("{mode} failed: {status}").into());
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    result
}

struct Echo;

type Answers = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Rtt for Echo {
    async fn call(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(answer(request.into_inner())))
    }

    type StreamStream = Answers;

    /// Answers in order, polled by the stream's own task (no task per message).
    async fn stream(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Answers>, Status> {
        let answers = request.into_inner().map(|m| m.map(answer));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// A small answer, like an AppendEntries success.
fn answer(m: Msg) -> Msg {
    Msg {
        seq: m.seq,
        payload: Vec::new(),
    }
}

async fn serve(addr: String) -> Result<(), Error> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            RttServer::new(Echo)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve(addr.parse()?)
        .await?;
    Ok(())
}

async fn client(addr: String, mode: String, bytes: usize, count: usize) -> Result<(), Error> {
    let uri: http::Uri = format!("http://{addr}").parse()?;
    let payload = vec![7u8; bytes];
    let mut samples = Vec::with_capacity(count);
    match mode.as_str() {
        "direct" => {
            use raftlite_client::transport;
            let direct = transport::Direct::new(
                uri,
                transport::tcp(),
                transport::Settings::client(Duration::from_secs(2)),
            );
            let mut c = RttClient::new(direct).max_decoding_message_size(64 << 20);
            unary(&mut c, &payload, count, &mut samples).await?;
        }
        "channel" => {
            let mut c = over_channel(uri).await?;
            unary(&mut c, &payload, count, &mut samples).await?;
        }
        "stream" => {
            let mut c = over_channel(uri).await?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
            let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut answers = c.stream(outbound).await?.into_inner();
            for seq in 0..(WARMUP + count) as u64 {
                let t0 = Instant::now();
                tx.send(Msg {
                    seq,
                    payload: payload.clone(),
                })
                .await?;
                let got = answers.message().await?.ok_or("stream ended")?;
                if got.seq != seq {
                    return Err(format!("answer {} for message {seq}", got.seq).into());
                }
                if seq as usize >= WARMUP {
                    samples.push(t0.elapsed());
                }
            }
        }
        other => return Err(format!("unknown mode {other:?}").into()),
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "round {} {mode:8} {bytes} B: p10 {:6.1} µs  p50 {:6.1} µs  p90 {:6.1} µs  ({} calls)",
        std::env::var("PEER_RTT_ROUND").unwrap_or_default(),
        p(0.1),
        p(0.5),
        p(0.9),
        samples.len()
    );
    Ok(())
}

/// A client through tonic's `Channel`.
async fn over_channel(uri: http::Uri) -> Result<RttClient<tonic::transport::Channel>, Error> {
    let channel = tonic::transport::Endpoint::from(uri)
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(RttClient::new(channel).max_decoding_message_size(64 << 20))
}

async fn unary<T>(
    c: &mut RttClient<T>,
    payload: &[u8],
    count: usize,
    samples: &mut Vec<Duration>,
) -> Result<(), Error>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    for seq in 0..(WARMUP + count) as u64 {
        let t0 = Instant::now();
        let got = c
            .call(Msg {
                seq,
                payload: payload.to_vec(),
            })
            .await?
            .into_inner();
        if got.seq != seq {
            return Err(format!("answer {} for call {seq}", got.seq).into());
        }
        if seq as usize >= WARMUP {
            samples.push(t0.elapsed());
        }
    }
    Ok(())
}
