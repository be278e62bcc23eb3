//! `kvd` as a process: configuration errors, the data-directory lock, a
//! controller and a group replica serving from their TOML files, SIGTERM
//! stopping them cleanly, and a restart from the same directory keeping
//! what was written.
//!
//! Method: each test writes `kvd.toml` files into a temporary directory,
//! runs the real `kvd` binary (Cargo builds it for the test), talks to it
//! with the shardkv and controller clients over loopback, and stops it with
//! SIGTERM (the `kill` command). Ports are picked by binding 127.0.0.1:0
//! and closing the socket just before the child binds it again. Every wait
//! is bounded; every child is killed and reaped on every path out of a test
//! ([`Kvd`] kills on drop).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use controller::{ClerkOptions as AdminOptions, ControllerClerk};
use shardkv::{Clerk, ClerkOptions};
use tempfile::TempDir;

const KVD: &str = env!("CARGO_BIN_EXE_kvd");

/// A free loopback port (closed again: the child binds it).
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

/// A running `kvd`, killed and reaped when dropped.
struct Kvd {
    child: Option<Child>,
}

impl Kvd {
    fn start(config: &Path) -> Kvd {
        let child = Command::new(KVD)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kvd");
        Kvd { child: Some(child) }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        wait_bounded(&mut child, Duration::from_secs(20))
    }
}

impl Drop for Kvd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for kvd") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `kvd --config FILE` to completion (bounded); its status and stderr.
fn run_to_exit(config: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(KVD)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvd");
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

struct Addrs {
    peer: SocketAddr,
    client: SocketAddr,
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let node = dir.join(name);
    std::fs::create_dir_all(&node).unwrap();
    let path = node.join("kvd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn controller_toml(addrs: &Addrs) -> String {
    format!(
        "name = \"c1\"\nrole = \"controller\"\nnode_id = 1\ndata_dir = \"data\"\n\
         peer_addr = \"{p}\"\nclient_addr = \"{c}\"\ninitial_shards = 4\n\n\
         [[members]]\nnode_id = 1\npeer_addr = \"{p}\"\nclient_addr = \"{c}\"\n",
        p = addrs.peer,
        c = addrs.client
    )
}

fn group_toml(addrs: &Addrs, controller: SocketAddr) -> String {
    format!(
        "name = \"g1-n1\"\nrole = \"group\"\nnode_id = 1\ngid = 1\ndata_dir = \"data\"\n\
         peer_addr = \"{p}\"\nclient_addr = \"{c}\"\ncontrollers = [\"{controller}\"]\n\n\
         [[members]]\nnode_id = 1\npeer_addr = \"{p}\"\nclient_addr = \"{c}\"\n\n\
         [log]\nsnapshot_every_slots = 20\n",
        p = addrs.peer,
        c = addrs.client
    )
}

#[test]
fn a_bad_configuration_exits_2_naming_the_key() {
    let dir = TempDir::new().unwrap();
    let addrs = Addrs {
        peer: free_addr(),
        client: free_addr(),
    };
    let good = group_toml(&addrs, free_addr());
    let cases = [
        (good.replace("gid = 1", "gid = 0"), "gid"),
        (format!("{good}\ncolour = \"blue\"\n"), "colour"),
        (
            good.replace("role = \"group\"", "role = \"leader\""),
            "role",
        ),
        (
            good.replace("controllers = [", "controllers = [\"x\", "),
            "controllers",
        ),
        (String::from("this is not toml ["), "kvd.toml"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write_file(dir.path(), &format!("bad{i}"), text);
        let (status, stderr) = run_to_exit(&path);
        assert_eq!(status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(
            !path.parent().unwrap().join("data").exists(),
            "a refused configuration created no data directory"
        );
    }
    let (status, stderr) = run_to_exit(&dir.path().join("missing.toml"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_from_their_files_stop_on_sigterm_and_restart_with_their_data() {
    let dir = TempDir::new().unwrap();
    let controller_addrs = Addrs {
        peer: free_addr(),
        client: free_addr(),
    };
    let group_addrs = Addrs {
        peer: free_addr(),
        client: free_addr(),
    };
    let controller_file = write_file(dir.path(), "c1", &controller_toml(&controller_addrs));
    let group_file = write_file(
        dir.path(),
        "g1-n1",
        &group_toml(&group_addrs, controller_addrs.client),
    );
    let controller = Kvd::start(&controller_file);
    let group = Kvd::start(&group_file);

    let mut admin = ControllerClerk::new(
        vec![controller_addrs.client],
        AdminOptions {
            deadline: Duration::from_secs(20),
            ..AdminOptions::new(1)
        },
    );
    let join = BTreeMap::from([(1, vec![group_addrs.client.to_string()])]);
    admin.join(join).await.expect("join group 1");
    let options = |id| ClerkOptions {
        deadline: Duration::from_secs(20),
        ..ClerkOptions::new(id)
    };
    let mut clerk = Clerk::new(vec![controller_addrs.client], options(2));
    for i in 0..50u32 {
        clerk
            .append(b"key", format!("{i},").as_bytes())
            .await
            .expect("append");
    }
    let expected: String = (0..50u32).map(|i| format!("{i},")).collect();
    assert_eq!(
        clerk.get(b"key").await.unwrap(),
        Some(expected.clone().into_bytes())
    );

    // A second process on the same data directory is refused.
    let (status, stderr) = run_to_exit(&group_file);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");

    // SIGTERM: a clean exit; the restarted replica recovers everything
    // from its directory.
    assert!(group.terminate().success(), "group replica exit status");
    let group = Kvd::start(&group_file);
    let mut clerk = Clerk::new(vec![controller_addrs.client], options(3));
    assert_eq!(
        clerk.get(b"key").await.unwrap(),
        Some(expected.into_bytes())
    );
    assert!(group.terminate().success());
    assert!(controller.terminate().success());
}
