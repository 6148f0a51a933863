#![allow(clippy::unwrap_used)]
//! Load bench a user can run: a trivial upstream, the gateway on a public route (plain and
//! TLS), and the same requests sent straight to the upstream, all in one process on
//! 127.0.0.1. `cargo bench --bench proxy`. The side-by-side comparison with HAProxy and
//! nginx is `bench/run.sh` (see benches/README.md).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

async fn upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn gateway(up: SocketAddr, tls: bool, dir: &std::path::Path) -> iptgate::server::Running {
    let tls_line = if tls {
        iptgate::tls::write_dev_cert(dir, &[]).unwrap();
        "tls = { cert = \"gateway.crt\", key = \"gateway.key\" }\n"
    } else {
        ""
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"off\"\n{tls_line}\n[upstreams.app]\nurl = \"http://{up}\"\n\n[rate_limits.per_ip]\nkey = \"ip\"\nrate = \"100000000/s\"\nburst = 100000000\n\n[[routes]]\nname = \"public\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\nrate_limit = [\"per_ip\"]\n"
    );
    let path = dir.join(if tls { "tls.toml" } else { "plain.toml" });
    std::fs::write(&path, text).unwrap();
    let cfg = iptgate::config::Config::load(&path).unwrap();
    iptgate::server::start(cfg).await.unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("iptgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The Running handles stay alive for the whole bench (dropping one stops its gateway).
    let (up, plain_gw, tls_gw) = rt.block_on(async {
        let up = upstream().await;
        (
            up,
            gateway(up, false, &dir).await,
            gateway(up, true, &dir).await,
        )
    });
    let (plain, tls) = (plain_gw.addr, tls_gw.addr);
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let tls_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(NoVerify))
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_cfg)
        .https_only()
        .enable_http1()
        .build();
    let https: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);

    let mut g = c.benchmark_group("proxy");
    g.throughput(Throughput::Elements(32));
    for (name, uri) in [
        ("direct", format!("http://{up}/")),
        ("gateway_public_http", format!("http://{plain}/")),
    ] {
        let uri: hyper::Uri = uri.parse().unwrap();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let futs = (0..32).map(|_| {
                    let r = http.get(uri.clone());
                    async move { r.await.unwrap().into_body().collect().await.unwrap() }
                });
                futures_util::future::join_all(futs).await
            })
        });
    }
    let uri: hyper::Uri = format!("https://localhost:{}/", tls.port())
        .parse()
        .unwrap();
    g.bench_function("gateway_public_tls", |b| {
        b.to_async(&rt).iter(|| async {
            let futs = (0..32).map(|_| {
                let r = https.get(uri.clone());
                async move { r.await.unwrap().into_body().collect().await.unwrap() }
            });
            futures_util::future::join_all(futs).await
        })
    });
    g.finish();
    drop((plain_gw, tls_gw));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bench talks to its own dev certificate on 127.0.0.1.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
