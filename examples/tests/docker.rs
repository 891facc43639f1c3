//! Keeps `docker/` honest where no Docker engine runs: `compose.yaml` parses (yaml-rust2, a
//! maintained parser), each service's command and environment are run for real with the
//! workspace's binaries against a mosquitto spawned here (with the host, port and session
//! directory pointed at the test's own), and the Dockerfile builds and ships exactly the
//! binaries `examples/Cargo.toml` declares.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

const GUARD: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap();
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn env_of(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("environment value {other:?}: quote it"),
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// The program and arguments a service runs: the command itself, or the last stage of an
/// `sh -c` pipeline.
fn invocation(service: &Yaml) -> Vec<String> {
    let cmd = strings(&service["command"]);
    if cmd[0] == "sh" {
        assert_eq!(cmd[1], "-c");
        let last = cmd[2].rsplit('|').next().unwrap();
        last.split_whitespace().map(str::to_owned).collect()
    } else {
        cmd
    }
}

#[test]
fn compose_file_parses_and_is_what_the_readme_says() {
    let c = compose();
    let services = &c["services"];
    for name in ["mosquitto", "pub", "sub"] {
        assert!(!services[name].is_badvalue(), "no service {name}");
    }
    // Ports only on loopback.
    for p in strings(&services["mosquitto"]["ports"]) {
        assert!(p.starts_with("127.0.0.1:"), "{p} listens beyond loopback");
    }
    // The file sessions are on named volumes, mounted where PAHO_SESSION_DIR points.
    let volumes = c["volumes"].as_hash().unwrap();
    for name in ["pub", "sub"] {
        let s = &services[name];
        let env = env_of(s);
        let dir = &env["PAHO_SESSION_DIR"];
        let mounts = strings(&s["volumes"]);
        let (vol, at) = mounts[0].split_once(':').unwrap();
        assert_eq!(at, dir, "{name}: the session dir is not the volume");
        assert!(
            volumes.contains_key(&Yaml::String(vol.to_owned())),
            "{name}: volume {vol} is not a named volume"
        );
        assert_eq!(s["build"]["dockerfile"].as_str(), Some("docker/Dockerfile"));
    }
    // The files it mounts and builds from exist.
    let conf = std::fs::read_to_string(root().join("docker/mosquitto.conf")).unwrap();
    assert!(conf.lines().any(|l| l.trim() == "listener 1883"));
    assert!(conf.lines().any(|l| l.trim() == "protocol websockets"));
}

#[test]
fn dockerfile_builds_and_ships_the_workspace_binaries() {
    let manifest = std::fs::read_to_string(root().join("examples/Cargo.toml")).unwrap();
    let mut bins: Vec<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = \""))
                .map(|n| n.trim_end_matches('"').to_owned())
        })
        .collect();
    bins.sort();
    let docker = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let build = docker
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("no cargo build in the Dockerfile");
    assert!(build.contains("-p paho-examples"), "{build}");
    let mut built: Vec<String> = build
        .split("--bin ")
        .skip(1)
        .map(|s| s.split_whitespace().next().unwrap().to_owned())
        .collect();
    built.sort();
    assert_eq!(
        built, bins,
        "the Dockerfile builds other binaries than the workspace"
    );
    let mut shipped: Vec<String> = docker
        .lines()
        .filter(|l| l.starts_with("COPY --from=build"))
        .map(|l| l.rsplit('/').next().unwrap().to_owned())
        .collect();
    shipped.sort();
    assert_eq!(shipped, bins, "the image ships other binaries");
    // Its toolchain is at least the workspace's rust-version.
    let ws = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let want = ws
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    let from = docker
        .lines()
        .find(|l| l.starts_with("FROM rust:"))
        .unwrap();
    let have = from["FROM rust:".len()..].split('-').next().unwrap();
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        v(have) >= v(want),
        "FROM rust:{have} is older than rust-version {want}"
    );
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut r = r;
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut chunk) {
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

fn command_for(inv: &[String], env: &BTreeMap<String, String>) -> Command {
    let program = match inv[0].as_str() {
        "pub" => env!("CARGO_BIN_EXE_pub"),
        "sub" => env!("CARGO_BIN_EXE_sub"),
        other => panic!("a service runs {other}, not one of the workspace's binaries"),
    };
    let mut c = Command::new(program);
    c.args(&inv[1..]).envs(env);
    c
}

#[test]
fn compose_services_commands_and_environment_are_accepted_by_the_binaries() {
    let Some(builder) = paho_testserver::mosquitto::require() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut broker = rt.block_on(builder.log_all(true).start()).unwrap();
    let c = compose();
    let dir = tempfile::tempdir().unwrap();
    // The services' environment, pointed at this test's broker and directories.
    let env = |name: &str| {
        let mut e = env_of(&c["services"][name]);
        e.insert("MQTT_HOST".into(), "127.0.0.1".into());
        e.insert("MQTT_PORT".into(), broker.port().to_string());
        let d = dir.path().join(name);
        e.insert("PAHO_SESSION_DIR".into(), d.to_str().unwrap().to_owned());
        e
    };
    let sub_env = env("sub");
    let mut sub = command_for(&invocation(&c["services"]["sub"]), &sub_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(sub.stdout.take().unwrap());
    let err = collect(sub.stderr.take().unwrap());
    let id = &sub_env["MQTT_CLIENT_ID"];
    let start = Instant::now();
    while !broker
        .log()
        .contains(&format!("Received SUBSCRIBE from {id}"))
    {
        if let Some(status) = sub.try_wait().unwrap() {
            panic!("sub exited ({status}): {}", err.lock().unwrap());
        }
        assert!(
            start.elapsed() < GUARD,
            "sub never subscribed: {}",
            err.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The publisher's pipeline, fed three numbers instead of `seq`.
    let mut p = command_for(&invocation(&c["services"]["pub"]), &env("pub"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"1\n2\n3\n").unwrap();
    let perr = collect(p.stderr.take().unwrap());
    let status = p.wait().unwrap();
    assert!(status.success(), "pub failed: {}", perr.lock().unwrap());
    let topic = &sub_env["MQTT_TOPIC"];
    let want = format!("{topic} 1\n{topic} 2\n{topic} 3\n");
    let start = Instant::now();
    while !out.lock().unwrap().contains(&want) {
        assert!(
            start.elapsed() < GUARD,
            "sub printed {:?}",
            out.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    sub.kill().unwrap();
    sub.wait().unwrap();
    rt.block_on(broker.stop()).unwrap();
}
