//! The `blockpost` binary: parses flags and calls the library.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blockpost_cli::{
    BenchArgs, BenchMessagesArgs, Client, Messenger, NodeArgs, Outgoing, bench_directory,
    bench_messages, config_dir, entry_json, print_entry, received_json, received_line, run_node,
};
use blockpost_core::Identity;
use blockpost_proto::v1::MessageKind;
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "blockpost",
    version,
    about = "Blockpost: auditable messaging around a transparency-log key directory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Conn {
    /// Node gRPC endpoint.
    #[arg(
        long,
        env = "BLOCKPOST_ENDPOINT",
        default_value = "http://127.0.0.1:7700"
    )]
    endpoint: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node: directory and messaging gateway on one gRPC port, over NATS JetStream.
    Up(NodeArgs),
    /// Manage key files.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Print the node's public identity: log origin, log verifier key, CA certificate.
    Info {
        #[command(flatten)]
        conn: Conn,
    },
    /// Join the directory: bind an address and a real name to a key file's keys.
    Register {
        /// Key file (from `blockpost key new`).
        #[arg(long)]
        key: PathBuf,
        /// Routing address: `[a-z0-9][a-z0-9-]{0,62}`.
        #[arg(long)]
        address: String,
        /// Real (legal) name.
        #[arg(long)]
        name: String,
        /// PEM file: evidence certificate chain, leaf first, leading to a trust anchor.
        #[arg(long, requires = "evidence_key")]
        evidence_chain: Option<PathBuf>,
        /// PEM file: PKCS#8 private key of the evidence certificate (ed25519 or P-256).
        #[arg(long, requires = "evidence_chain")]
        evidence_key: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an address's current binding and history, with verified proofs.
    Lookup {
        /// The address.
        address: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace a binding's keys with those of another key file.
    Rotate {
        /// Current key file.
        #[arg(long)]
        key: PathBuf,
        /// Key file with the new keys.
        #[arg(long)]
        new_key: PathBuf,
        /// The address.
        #[arg(long)]
        address: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// End a binding, signed by its current key or by its evidence key.
    Revoke {
        /// The address.
        #[arg(long)]
        address: String,
        /// Current key file.
        #[arg(long, conflicts_with = "evidence_key")]
        key: Option<PathBuf>,
        /// PEM PKCS#8 private key of the evidence certificate.
        #[arg(long)]
        evidence_key: Option<PathBuf>,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Fetch, verify and remember the newest checkpoint (checks consistency with the last one).
    Checkpoint {
        #[command(flatten)]
        conn: Conn,
    },
    /// Send a message about a transaction (signed; --encrypt seals it to each recipient).
    Send {
        #[command(flatten)]
        msg: MsgArgs,
        /// Seal the body end to end for each recipient (HPKE); metadata stays public.
        #[arg(long)]
        encrypt: bool,
        /// Send a file as a document (instead of TEXT).
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// Record only the SHA-256 of --file, not its contents.
        #[arg(long, requires = "file")]
        hash_only: bool,
        /// MIME type of the body (default: text/plain, or application/octet-stream for files).
        #[arg(long)]
        content_type: Option<String>,
        /// The message text.
        text: Option<String>,
    },
    /// Tell the other parties that this party considers the transaction finished.
    Finish {
        #[command(flatten)]
        msg: MsgArgs,
        /// Seal the note end to end.
        #[arg(long)]
        encrypt: bool,
        /// An optional closing note.
        text: Option<String>,
    },
    /// Read your inbox: verifies every signature against the directory, decrypts what is
    /// addressed to you, and acknowledges what it printed.
    Inbox {
        /// Key file.
        #[arg(long)]
        key: PathBuf,
        /// Your address (default: the one `register` recorded beside the key file).
        #[arg(long)]
        from: Option<String>,
        /// Keep waiting for new messages.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read the public firehose (every accepted envelope, in order).
    Firehose {
        /// First sequence number.
        #[arg(long = "from", default_value_t = 1)]
        from_seq: u64,
        /// Keep waiting for new messages.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Load generators.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(clap::Args)]
struct MsgArgs {
    /// Key file of the sender.
    #[arg(long)]
    key: PathBuf,
    /// Sender address (default: the one `register` recorded beside the key file).
    #[arg(long)]
    from: Option<String>,
    /// Recipients, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Transaction id (a trade, a settlement, an agreement).
    #[arg(long)]
    tx: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key file (ed25519 + x25519, encrypted PKCS#8, mode 0600).
    New {
        /// Where to write it; never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Registrations/s and look-up latency of the directory.
    Directory(BenchArgs),
    /// Accepted envelopes/s and submit-to-receipt latency of the gateway.
    Messages(BenchMessagesArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLOCKPOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,blockpost=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("BLOCKPOST_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set BLOCKPOST_PASSPHRASE or run in a terminal");
    }
    let p = Zeroizing::new(rpassword::prompt_password("key file passphrase: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("again: ")?);
        if *again != *p {
            bail!("passphrases differ");
        }
    }
    if p.is_empty() {
        bail!("empty passphrase");
    }
    Ok(p)
}

fn read_key(path: &Path) -> anyhow::Result<Identity> {
    let p = passphrase(false)?;
    Ok(Identity::read(path, p.as_bytes())?)
}

fn evidence_signer(path: &Path) -> anyhow::Result<impl Fn(&[u8]) -> anyhow::Result<Vec<u8>>> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = rcgen::KeyPair::from_pem(&pem)
        .with_context(|| format!("{}: not a PKCS#8 private key", path.display()))?;
    Ok(move |msg: &[u8]| {
        rcgen::SigningKey::sign(&key, msg).map_err(|e| anyhow::anyhow!("signing: {e}"))
    })
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        out.push(
            p.with_context(|| format!("{}: bad PEM", path.display()))?
                .contents,
        );
    }
    if out.is_empty() {
        bail!("{}: no certificate found", path.display());
    }
    Ok(out)
}

fn address_file(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".address");
    PathBuf::from(p)
}

fn sender_address(key: &Path, from: Option<String>) -> anyhow::Result<String> {
    let a = match from {
        Some(a) => a,
        None => std::fs::read_to_string(address_file(key))
            .map(|s| s.trim().to_owned())
            .map_err(|_| {
                anyhow::anyhow!(
                    "no address recorded for {}; pass --from ADDRESS",
                    key.display()
                )
            })?,
    };
    blockpost_core::Address::parse(&a)?;
    Ok(a)
}

async fn send_message(
    m: MsgArgs,
    kind: MessageKind,
    content_type: String,
    body: Vec<u8>,
    encrypt: bool,
) -> anyhow::Result<()> {
    let from = sender_address(&m.key, m.from)?;
    for r in &m.to {
        blockpost_core::Address::parse(r)?;
    }
    let id = read_key(&m.key)?;
    let mut messenger = Messenger::connect(&m.conn.endpoint, &config_dir()).await?;
    let out = Outgoing {
        from: &from,
        to: &m.to,
        transaction_id: &m.tx,
        kind,
        content_type: &content_type,
        body,
        encrypt,
    };
    let (_, r) = messenger.send(&id, out).await?;
    if m.conn.json {
        blockpost_cli::say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "message_id": hex::encode(&r.message_id),
                "firehose_sequence": r.firehose_sequence,
                "accepted_at_ms": r.accepted_at_ms,
                "block_deadline_ms": r.block_deadline_ms,
                "gateway_key": hex::encode(&r.gateway_key),
                "receipt_verified": true,
            }))?
        );
    } else {
        blockpost_cli::say!(
            "accepted #{} message {} (receipt verified; in a block by {} ms)",
            r.firehose_sequence,
            hex::encode(&r.message_id),
            r.block_deadline_ms
        );
    }
    Ok(())
}

fn print_received(r: &blockpost_cli::Received, json: bool) -> anyhow::Result<()> {
    if json {
        blockpost_cli::say!("{}", serde_json::to_string(&received_json(r))?);
    } else {
        blockpost_cli::say!("{}", received_line(r));
    }
    Ok(())
}

async fn connect(conn: &Conn) -> anyhow::Result<Client> {
    Client::connect(&conn.endpoint, &config_dir()).await
}

fn show(e: &blockpost_cli::VerifiedEntry, json: bool) -> anyhow::Result<()> {
    if json {
        blockpost_cli::say!("{}", serde_json::to_string_pretty(&entry_json(e))?);
    } else {
        print_entry(e);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Up(args) => run_node(args).await,
        Cmd::Key {
            cmd: KeyCmd::New { out, json },
        } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite a key file", out.display());
            }
            let p = passphrase(true)?;
            let id = Identity::generate();
            id.write(&out, p.as_bytes())?;
            if json {
                blockpost_cli::say!(
                    "{}",
                    serde_json::json!({
                        "file": out.display().to_string(),
                        "signing_key": hex::encode(id.signing_public()),
                        "encryption_key": hex::encode(id.encryption_public()),
                    })
                );
            } else {
                blockpost_cli::say!("wrote {} (encrypted PKCS#8, mode 0600)", out.display());
                blockpost_cli::say!("  signing key     {}", hex::encode(id.signing_public()));
                blockpost_cli::say!("  encryption key  {}", hex::encode(id.encryption_public()));
            }
            Ok(())
        }
        Cmd::Info { conn } => {
            let c = connect(&conn).await?;
            let i = c.info();
            if conn.json {
                blockpost_cli::say!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "endpoint": c.endpoint(),
                        "origin": i.origin,
                        "verifier_key": i.verifier_key,
                        "ca_certificate_pem": i.ca_certificate_pem,
                        "require_verified": i.require_verified,
                    }))?
                );
            } else {
                blockpost_cli::say!("origin        {}", i.origin);
                blockpost_cli::say!("verifier key  {}", i.verifier_key);
                blockpost_cli::say!(
                    "names         {}",
                    if i.require_verified {
                        "evidence required"
                    } else {
                        "evidence optional"
                    }
                );
                blockpost_cli::say!("{}", i.ca_certificate_pem.trim_end());
            }
            Ok(())
        }
        Cmd::Register {
            key,
            address,
            name,
            evidence_chain,
            evidence_key,
            conn,
        } => {
            blockpost_core::Address::parse(&address)?;
            let id = read_key(&key)?;
            let mut c = connect(&conn).await?;
            let e = match (evidence_chain, evidence_key) {
                (Some(chain), Some(k)) => {
                    let chain = read_chain(&chain)?;
                    let signer = evidence_signer(&k)?;
                    c.register(&id, &address, &name, Some((&chain, &signer)))
                        .await?
                }
                _ => c.register(&id, &address, &name, None).await?,
            };
            // Remember the address beside the key file, for send, finish and inbox.
            let _ = std::fs::write(address_file(&key), format!("{address}\n"));
            show(&e, conn.json)
        }
        Cmd::Lookup { address, conn } => {
            blockpost_core::Address::parse(&address)?;
            let mut c = connect(&conn).await?;
            let history = c.lookup(&address).await?;
            let Some(current) = history.last() else {
                bail!("empty history")
            };
            if conn.json {
                let mut v = entry_json(current);
                v["history"] = history.iter().map(entry_json).collect();
                blockpost_cli::say!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_entry(current);
                if history.len() > 1 {
                    blockpost_cli::say!(
                        "  history         {}",
                        history
                            .iter()
                            .map(|e| e.leaf_index.to_string())
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    );
                }
            }
            Ok(())
        }
        Cmd::Rotate {
            key,
            new_key,
            address,
            conn,
        } => {
            let old = read_key(&key)?;
            let new = read_key(&new_key)?;
            let mut c = connect(&conn).await?;
            let e = c.rotate(&old, &new, &address).await?;
            show(&e, conn.json)
        }
        Cmd::Revoke {
            address,
            key,
            evidence_key,
            reason,
            conn,
        } => {
            let mut c = connect(&conn).await?;
            let e = match (key, evidence_key) {
                (Some(k), _) => {
                    c.revoke(&address, &reason, Some(&read_key(&k)?), None)
                        .await?
                }
                (None, Some(ek)) => {
                    let s = evidence_signer(&ek)?;
                    c.revoke(&address, &reason, None, Some(&s)).await?
                }
                (None, None) => bail!("give --key (the current key file) or --evidence-key"),
            };
            show(&e, conn.json)
        }
        Cmd::Checkpoint { conn } => {
            let mut c = connect(&conn).await?;
            let cp = c.checkpoint().await?;
            if conn.json {
                blockpost_cli::say!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "origin": cp.origin,
                        "tree_size": cp.size,
                        "root_hash": hex::encode(cp.root),
                        "checkpoint": String::from_utf8_lossy(&cp.note),
                    }))?
                );
            } else {
                blockpost_cli::say!("{}", String::from_utf8_lossy(&cp.note).trim_end());
                eprintln!(
                    "(signature verified; consistent with every checkpoint this client saw before)"
                );
            }
            Ok(())
        }
        Cmd::Send {
            msg,
            encrypt,
            file,
            hash_only,
            content_type,
            text,
        } => {
            let (kind, ct, body) = match (file, text) {
                (Some(f), _) => {
                    let bytes =
                        std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                    if hash_only {
                        let h = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                        (
                            MessageKind::Document,
                            "text/x-sha256".to_owned(),
                            h.into_bytes(),
                        )
                    } else {
                        let ct = content_type.unwrap_or_else(|| "application/octet-stream".into());
                        (MessageKind::Document, ct, bytes)
                    }
                }
                (None, Some(t)) => (
                    MessageKind::Message,
                    content_type.unwrap_or_else(|| "text/plain".into()),
                    t.into_bytes(),
                ),
                (None, None) => bail!("give the message TEXT or --file PATH"),
            };
            send_message(msg, kind, ct, body, encrypt).await
        }
        Cmd::Finish { msg, encrypt, text } => {
            let body = text
                .unwrap_or_else(|| "Transaction finished.".into())
                .into_bytes();
            send_message(msg, MessageKind::Finish, "text/plain".into(), body, encrypt).await
        }
        Cmd::Inbox {
            key,
            from,
            follow,
            conn,
        } => {
            let me = sender_address(&key, from)?;
            let id = read_key(&key)?;
            let mut m = Messenger::connect(&conn.endpoint, &config_dir()).await?;
            let json = conn.json;
            let n = m
                .inbox(&id, &me, follow, |r| print_received(r, json))
                .await?;
            if !json {
                eprintln!(
                    "{n} message(s); signatures verified against the directory; acknowledged"
                );
            }
            Ok(())
        }
        Cmd::Firehose {
            from_seq,
            follow,
            conn,
        } => {
            let mut m = Messenger::connect(&conn.endpoint, &config_dir()).await?;
            let json = conn.json;
            m.firehose(from_seq, follow, |r| print_received(r, json))
                .await?;
            Ok(())
        }
        Cmd::Bench {
            cmd: BenchCmd::Directory(args),
        } => bench_directory(args).await,
        Cmd::Bench {
            cmd: BenchCmd::Messages(args),
        } => bench_messages(args).await,
    }
}
