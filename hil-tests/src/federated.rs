//! A federation as the tests set it up: the server's folder, keys and configuration, and
//! sites whose appliance configuration carries the `[federation]` table the updater reads,
//! with the local head the appliance hands over. Heads are small named tensors.

use crate::fleet::{run, Broker, FleetPki, Process};
use fleet_wire::tensors::{self, Array};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// The federation and the model every test fleet uses.
pub const FEDERATION: &str = "fleet-test";
pub const MODEL: &str = "head-test";

/// A head of two tensors, `w` and `b`, as safetensors bytes.
pub fn head_blob(w: &[f32], b: &[f32]) -> Vec<u8> {
    tensors::encode(
        &[
            ("b".to_string(), Array::F32(b.to_vec())),
            ("w".to_string(), Array::F32(w.to_vec())),
        ],
        &BTreeMap::new(),
    )
    .expect("encode a head")
}

/// The float tensors of a head file, by name.
pub fn read_head(path: &Path) -> BTreeMap<String, Vec<f32>> {
    try_read_head(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The float tensors of a head file, by name, or why it is not a whole head.
pub fn try_read_head(path: &Path) -> Result<BTreeMap<String, Vec<f32>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (arrays, _) =
        tensors::decode(&bytes).map_err(|e| format!("{}: not a head: {e}", path.display()))?;
    arrays
        .into_iter()
        .map(|(name, a)| match a {
            Array::F32(v) => Ok((name, v)),
            other => Err(format!("{}: {name} is {other:?}", path.display())),
        })
        .collect()
}

/// The initial global head (version 1).
pub const W0: [f32; 6] = [0.5, -0.25, 1.0, 0.0, 2.0, -1.5];
pub const B0: [f32; 2] = [0.1, -0.1];

/// The server's folder, keys and configuration.
pub struct ServerSetup {
    pub dir: TempDir,
    pub config: PathBuf,
    pub public_key: PathBuf,
    pub private_key: PathBuf,
}

/// A server's signing key pair made by `federation keygen` in `dir`: (private, public) PEM.
pub fn signing_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let private_key = dir.join("signing.pem");
    let public_key = dir.join("signing.pub.pem");
    run(
        "federation",
        &[
            "keygen",
            "--private",
            &private_key.to_string_lossy(),
            "--public",
            &public_key.to_string_lossy(),
        ],
    );
    (private_key, public_key)
}

/// A server enrolling `enrolled` with its signing keys made by `federation keygen`, the
/// initial head [`W0`], [`B0`], and a configuration reaching `broker`.
pub fn server_setup(
    pki: &FleetPki,
    broker: &Broker,
    enrolled: &[&str],
    quorum: u32,
    round_seconds: u64,
    aggregator: &str,
) -> ServerSetup {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = pki.client("federation-server");
    let (private_key, public_key) = signing_keys(dir.path());
    std::fs::write(dir.path().join("initial.safetensors"), head_blob(&W0, &B0)).unwrap();
    let config = dir.path().join("federation.toml");
    let enrolled: Vec<String> = enrolled.iter().map(|d| format!("{d:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "federation = {FEDERATION:?}\nbroker = {broker:?}\nca_file = {ca:?}\ncert_file = {cert:?}\n\
             key_file = {key:?}\nsigning_key_file = \"signing.pem\"\ndata_dir = \"data\"\n\
             model = {MODEL:?}\ninitial_head = \"initial.safetensors\"\nenrolled = [{enrolled}]\n\
             quorum = {quorum}\nround_seconds = {round_seconds}\naggregator = {aggregator:?}\n\
             clip_norm = 100.0\n",
            broker = broker.url(),
            ca = pki.ca.cert,
            cert = cert.cert,
            key = cert.key,
            enrolled = enrolled.join(", "),
        ),
    )
    .unwrap();
    ServerSetup {
        dir,
        config,
        public_key,
        private_key,
    }
}

/// One site: its data folder with an appliance configuration whose `[federation]` table the
/// updater reads, and its local head fine-tuned from global version 1.
pub struct Site {
    pub id: String,
    pub dir: TempDir,
    pub config: PathBuf,
    data: PathBuf,
}

impl Site {
    pub fn new(pki: &FleetPki, broker: &Broker, server: &ServerSetup, id: &str) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Site::with_data(pki, broker, server, id, dir, data)
    }

    /// A site whose data folder is `data` (elsewhere than its own folder `dir`, which keeps
    /// its configuration and logs).
    pub fn with_data(
        pki: &FleetPki,
        broker: &Broker,
        server: &ServerSetup,
        id: &str,
        dir: TempDir,
        data: PathBuf,
    ) -> Site {
        let cert = pki.client(id);
        let mut config = crate::appliance::example_config();
        config.insert(
            "data_dir".into(),
            toml::Value::String(data.display().to_string()),
        );
        let federation: toml::Table = toml::from_str(&format!(
            "enabled = true\nbroker = {broker:?}\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n\
             federation = {FEDERATION:?}\ntrusted_key = {trusted:?}\nmodel = {MODEL:?}\n",
            broker = broker.url(),
            ca = pki.ca.cert,
            cert = cert.cert,
            key = cert.key,
            trusted = server.public_key,
        ))
        .unwrap();
        config.insert("federation".into(), toml::Value::Table(federation));
        let path = dir.path().join("appliance.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        Site {
            id: id.to_string(),
            dir,
            config: path,
            data,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    /// What the appliance hands over after fine-tuning from global `base`.
    pub fn put_local_head(&self, base: u64, w: &[f32], b: &[f32], cases: u32) {
        put_local_head(&self.data(), base, w, b, cases);
    }

    /// Where global head `version` is handed over to the appliance.
    pub fn global(&self, version: u64) -> PathBuf {
        fleet_wire::site::global_dir(&self.data()).join(format!("{version}.safetensors"))
    }

    /// `updater run` of this site, its log in the site's folder.
    pub fn updater(&self) -> Process {
        Process::start(
            "updater",
            &["run", "--config", self.config.to_str().unwrap()],
            self.dir.path().join("updater.log"),
        )
    }

    /// `updater status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&run(
            "updater",
            &[
                "status",
                "--config",
                self.config.to_str().unwrap(),
                "--json",
            ],
        ))
        .unwrap()
    }
}

/// What the appliance in `data_dir` hands over after fine-tuning from global `base` on `cases`
/// cases: the head and its description.
pub fn put_local_head(data_dir: &Path, base: u64, w: &[f32], b: &[f32], cases: u32) {
    let dir = fleet_wire::site::outgoing_dir(data_dir);
    fleet_wire::site::write_durably(&dir.join(format!("{base}.safetensors")), &head_blob(w, b))
        .expect("hand over the local head");
    let meta = fleet_wire::site::Outgoing {
        model: MODEL.into(),
        base_version: base,
        cases,
    };
    fleet_wire::site::write_durably(
        &dir.join(format!("{base}.json")),
        serde_json::to_string(&meta)
            .expect("describe the local head")
            .as_bytes(),
    )
    .expect("hand over the local head's description");
}

/// `federation rounds list --json`.
pub fn rounds(server: &ServerSetup) -> Vec<serde_json::Value> {
    run(
        "federation",
        &[
            "rounds",
            "list",
            "--config",
            server.config.to_str().unwrap(),
            "--json",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}
