//! TLS for `mqtts://` brokers: rustls with the ring provider (aws-lc-rs is painful to
//! cross-build for armv7), a CA bundle, and an optional client certificate.

use crate::config::MqttSection;
use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

/// The bundle Debian and Raspberry Pi OS keep the system roots in.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: reading PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate found", path.display());
    }
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .with_context(|| format!("{}: reading a PEM private key", path.display()))?
        .with_context(|| format!("{}: no PEM private key found", path.display()))
}

pub fn client_config(m: &MqttSection) -> anyhow::Result<Arc<ClientConfig>> {
    let ca = if m.ca_file.as_os_str().is_empty() {
        Path::new(SYSTEM_ROOTS)
    } else {
        m.ca_file.as_path()
    };
    let mut roots = RootCertStore::empty();
    for c in certs(ca).context("mqtt.ca_file")? {
        roots
            .add(c)
            .with_context(|| format!("{}: unusable CA certificate", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = if m.client_cert.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        builder
            .with_client_auth_cert(
                certs(&m.client_cert).context("mqtt.client_cert")?,
                key(&m.client_key).context("mqtt.client_key")?,
            )
            .context("mqtt.client_cert / mqtt.client_key")?
    };
    Ok(Arc::new(config))
}
